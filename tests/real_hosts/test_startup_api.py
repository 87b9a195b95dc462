"""The extension inside a real A1111 / Forge started with ``--api --api-auth``: it loads without a
traceback, its accordion is in the UI config, its routes answer (behind the host's credentials),
and its install.py changes no installed package."""
import subprocess

import pytest

from tools.hosts import host as hosts

pytestmark = pytest.mark.real_host


def test_starts_without_a_traceback_of_ours(webui):
    assert webui.running.alive(), webui.log_text()[-3000:]
    ours = hosts.extension_tracebacks(webui.log_text())
    assert not ours, "\n\n".join(ours)


def test_ui_config_has_our_accordion(webui):
    response = webui.get("/config", auth=False)
    assert response.status_code == 200
    elem_ids = {str((component.get("props") or {}).get("elem_id") or "")
                for component in response.json().get("components", [])}
    for tab in ("txt2img", "img2img"):
        ours = sorted(elem_id for elem_id in elem_ids if elem_id.startswith(f"{tab}_sam_"))
        assert ours, f"no element with an elem_id starting {tab}_sam_ in /config"


@pytest.mark.parametrize("path", ["/sam/heartbeat", "/sam/v2/health"])
def test_routes_answer_in_the_real_app(webui, path):
    response = webui.get(path)
    assert response.status_code == 200, response.text[:2000]
    assert response.json() is not None


def test_api_auth_guards_our_routes(webui):
    assert webui.get("/sam/heartbeat", auth=False).status_code == 401
    wrong = __import__("requests").get(webui.base_url + "/sam/heartbeat", auth=("sam-user", "wrong"), timeout=60)
    assert wrong.status_code == 401
    assert webui.get("/sam/heartbeat").status_code == 200
    # the host's own API is guarded the same way: the credentials are really in force
    assert webui.get("/sdapi/v1/options", auth=False).status_code == 401


def _freeze(python):
    result = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True)
    return sorted(line for line in result.stdout.splitlines() if line.strip())


def test_install_py_changes_no_installed_version(host_setup):
    before = _freeze(host_setup.python)
    extension = host_setup.webui_dir / "extensions" / hosts.EXTENSION_DIR_NAME
    env = hosts.host_env(host_setup.name)
    env["PYTHONPATH"] = str(host_setup.webui_dir)  # as the WebUI's run_extension_installer sets it
    result = subprocess.run([str(host_setup.python), str(extension / "install.py")], cwd=host_setup.webui_dir,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    after = _freeze(host_setup.python)
    # Adding what the extension needs (pymatting and its numba, the first time) is install.py's
    # job; changing or removing anything the host already had is not.
    versions_before, versions_after = _versions(before), _versions(after)
    changed = sorted(f"{name}: {version} -> {versions_after.get(name, 'removed')}"
                     for name, version in versions_before.items() if versions_after.get(name) != version)
    assert not changed, f"install.py changed: {changed}\n{result.stdout}{result.stderr}"
    assert "pymatting" in versions_after, "install.py did not install the soft-edge dependency"


def _versions(frozen):
    """{normalised package name: its version (or its pinned source)} from ``pip freeze`` lines."""
    pairs = (line.split("==", 1) if "==" in line else line.split(" @ ", 1) for line in frozen)
    return {pair[0].strip().lower().replace("_", "-"): pair[-1].strip() for pair in pairs}


def test_the_hosts_controlnet_is_loaded(webui):
    """Mikubill's sd-webui-controlnet (A1111) / Forge's built-in one loaded with its API: what the
    panel's "Send to ControlNet unit" needs is there."""
    response = webui.get("/controlnet/model_list")
    assert response.status_code == 200, response.text[:2000]
    assert "model_list" in response.json()
    # Only start-up counts: a later test runs a unit with no ControlNet model, which ControlNet
    # itself reports with a traceback.
    startup = webui.log_text().split("Startup time:")[0]
    assert not [block for block in hosts.tracebacks(startup) if "controlnet" in block.lower()]


def test_checkpoints_load_through_the_hosts_torch_load_and_a_refusal_is_explained(webui, host_models):
    """A1111 replaces torch.load with its own checker: official-format files load through it, and a
    file it refuses gets a message naming the checker (not "holds no model weights")."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 120, dtype=np.uint8)).save(buffer, format="PNG")
    body = {"image": base64.b64encode(buffer.getvalue()).decode(), "points": [[30, 20]], "labels": [1],
            "multimask": False, "mask_format": "rle"}
    good = webui.post("/sam/v2/predict", json={**body, "model": host_models["sam"]})
    assert good.status_code == 200, good.text[:2000]
    newer = webui.post("/sam/v2/predict", json={**body, "model": host_models["newer_torch_sam"]})
    if webui.name == "a1111":
        assert newer.status_code == 422, newer.text[:2000]
        message = newer.json()["msg"]
        assert "refused by the WebUI's own checkpoint checker" in message and "--disable-safe-unpickle" in message
    else:  # Forge keeps torch's own loader
        assert newer.status_code == 200, newer.text[:2000]
