"""SAM 2 / SAM 2.1 image models (Hiera trunk, FPN neck, SAM 2 mask decoder): our own code,
loaded from the official checkpoints, running on the hosts' torch (>= 2.1)."""

#: The family is listed in sd_webui_sam.model_registry.FAMILY_MODULES (sam2_image.families).
__all__: list = []
