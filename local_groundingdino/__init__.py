"""Pure-PyTorch GroundingDINO: text prompt -> boxes, offline, from the official checkpoints alone.

Public entry points live in :mod:`local_groundingdino.detector` (``load_detector``,
``Detector.detect``) and :mod:`local_groundingdino.store` (discovery, download, LRU cache).
Nothing here touches the network except an explicitly requested checkpoint download.
"""

__all__ = ["detector", "store"]
