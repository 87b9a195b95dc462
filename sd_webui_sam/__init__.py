"""Segment Anything for Stable Diffusion WebUI: the host-independent core.

Import the modules themselves (``sd_webui_sam.engine``, ``sd_webui_sam.api`` ...); the package
itself exports nothing, so that importing it loads nothing (docs/ARCHITECTURE.md draws the modules).
"""
__all__: list = []
