"""Host and toolkit differences, each behind one small module.

``gradio_compat``: gradio 3.41 (AUTOMATIC1111) versus gradio 4.x (Forge 2).
``host_compat``: AUTOMATIC1111 versus Forge, the ControlNet adapters, the per-process host session.
``generation``: what the script does to a processing object, host-independent.
"""
