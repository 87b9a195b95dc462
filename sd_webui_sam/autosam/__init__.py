"""AutoSAM: segment everything, and what is built on it (layers, EditAnything maps, SAM-refined
semantic segmentation, masks by category).

Host-independent: the panel and the HTTP API call these functions; nothing here imports the WebUI.
"""

__all__ = ["api_hooks", "editanything", "generator", "generator_helpers", "layers", "pipelines", "segmenters", "semantic"]
