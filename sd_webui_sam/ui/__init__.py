"""The gradio panel, shared by the WebUI script and the standalone app.

``panel`` builds it (with the ``autosam_tab`` and ``batch_tab`` tabs and ``text_prompt``'s section);
``elements`` holds what they share; ``handlers`` the event functions; ``memory_line`` what is loaded
and the button that frees it. Submodules are imported by name.
"""

__all__ = ["autosam_tab", "batch_tab", "elements", "handlers", "memory_line", "panel", "text_prompt"]
