"""Host and toolkit differences, each behind one small module. WebUI knowledge lives here only.

``gradio_compat``: gradio 3.41 (AUTOMATIC1111) versus gradio 4.x (Forge 2).
``controlnet``: sd-webui-controlnet versus Forge's built-in ControlNet, writing into a unit.
``controlnet_preprocessors``: the segmentation preprocessors of the host's ControlNet.
``options``: the extension's WebUI settings, and reading them into the core's settings.
``saving``: extra pictures saved beside the generated ones with the host's saver.
``session``: the per-process host session (the one engine, the img2img send targets).
``interrupt``: the host's Interrupt flag.
``generation``: what the script does to the WebUI's processing object ``p``.
``host_memory``: our models leave the GPU while the host generates and is short of VRAM.

Nothing here imports ``ui``, ``api`` or ``scripts``: what this package needs from them is handed in.
Submodules are imported by name (``from sd_webui_sam.compat import options``); this file imports
none of them, so the light ones never load gradio.
"""

__all__ = ["controlnet", "controlnet_preprocessors", "generation", "gradio_compat", "host_memory", "interrupt", "options",
           "saving", "session"]
