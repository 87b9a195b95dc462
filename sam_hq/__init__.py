"""HQ-SAM and MobileSAM: our own implementations, loading the official checkpoints unchanged.

The model registry finds them through ``sam_hq.families.FAMILIES``.
"""

__all__ = ["families", "segmenter"]
