import os
import tempfile

script_path = os.environ.get("WEBUI_STUB_ROOT") or os.path.join(tempfile.gettempdir(), "webui_stub_root")
data_path = script_path
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
