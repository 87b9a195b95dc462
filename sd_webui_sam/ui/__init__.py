"""The gradio panel, shared by the WebUI script and the standalone app."""
