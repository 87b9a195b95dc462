"""A faithful stand-in for the WebUI's ``modules`` package (A1111 1.10 signatures and hook order).

See /work/shared/reference/host_api.md section 10. ``harness`` loads the extension the way the
WebUI does and drives the UI build, the API's headless ``ui()`` calls and generations.
"""
