"""Real-host harness: the extension inside a real A1111 1.10.1 / Forge 2, on the CPU.

The hosts are set up by ``tools/hosts/setup_host.sh`` (in ``webui-hosts/``, first run only) and
started as subprocesses on 127.0.0.1. Everything here is marked ``real_host`` and deselected
unless ``SAM_REAL_HOSTS=1`` (``./test.sh`` sets it); ``SAM_REAL_HOSTS_ONLY=a1111`` (or ``forge``)
limits the run to one host.

Fixtures (all session-scoped: pytest runs every test of one host, whatever its module, before
the other host's, so each host starts once and only one host runs at a time):

- ``host_name``: "a1111" or "forge" (parametrised).
- ``host_setup``: ``HostSetup`` -- the host is set up (venv, tree, checkpoint), nothing runs.
- ``host_models``: tiny SAM and GroundingDINO files in the host's model folders ({"sam", "gdino"}).
- ``webui``: ``RealHost`` -- the host started with ``--api --api-auth`` (``AUTH``): ``base_url``,
  ``auth``, ``get(path, auth=True)``, ``log_text()``, ``log_path``, ``startup_seconds``,
  ``extension_seconds`` (the host's own timer records that name our extension), ``running``
  (the ``tools.hosts.host.RunningHost``), ``webui_dir``, ``python``.
"""
from __future__ import annotations

import os
import shutil
import zipfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

import pytest

from tools.hosts import host as hosts

#: Tokens in local_groundingdino/vocab.txt, the BERT vocabulary the host's GroundingDINO reads.
BUNDLED_VOCAB_SIZE = 30522

ARTIFACTS = hosts.ROOT / "test-artifacts" / "real_hosts"
AUTH = ("sam-user", "sam-pass")
ENABLED = os.environ.get("SAM_REAL_HOSTS") == "1"
HERE = Path(__file__).resolve().parent
TIMINGS: list = []


def selected_hosts():
    only = os.environ.get("SAM_REAL_HOSTS_ONLY", "").strip()
    return [name for name in hosts.HOST_NAMES if not only or name in only.split(",")]


def pytest_collection_modifyitems(config, items):
    ours, others = [], []
    for item in items:
        (ours if HERE in Path(str(item.fspath)).resolve().parents else others).append(item)
    for item in ours:
        item.add_marker(pytest.mark.real_host)
        # set-up (PyTorch download, checkpoint) and start-up run inside the first test's fixtures
        item.add_marker(pytest.mark.timeout(int(os.environ.get("SAM_REAL_HOSTS_TIMEOUT", "3600"))))
    if not ENABLED and ours:
        config.hook.pytest_deselected(items=ours)
        items[:] = others


def pytest_terminal_summary(terminalreporter):
    if not TIMINGS:
        return
    terminalreporter.section("real-host timings")
    for line in TIMINGS:
        terminalreporter.write_line(line)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "timings.txt").write_text("\n".join(TIMINGS) + "\n")


def note(line: str):
    TIMINGS.append(line)
    print(line)


# Session scope: pytest runs every test of one host before the next host's (it groups tests by a
# session fixture's parameter), so each host is started once for all modules and stopped before
# the other starts.
@pytest.fixture(scope="session", params=selected_hosts())
def host_name(request):
    return request.param


@dataclass
class HostSetup:
    name: str
    setup_seconds: float
    webui_dir: Path
    python: Path


_SETUP_DONE: Dict[str, HostSetup] = {}


@pytest.fixture(scope="session")
def host_setup(host_name) -> HostSetup:
    if host_name not in _SETUP_DONE:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with open(ARTIFACTS / f"setup-{host_name}.log", "a", encoding="utf-8") as log:
            seconds = hosts.setup_host(host_name, log=log)
        note(f"{host_name}: set-up {seconds:.0f}s (log {ARTIFACTS / f'setup-{host_name}.log'})")
        _SETUP_DONE[host_name] = HostSetup(host_name, seconds, hosts.webui_dir(host_name), hosts.host_python(host_name))
    return _SETUP_DONE[host_name]


@dataclass
class RealHost:
    name: str
    running: hosts.RunningHost
    auth: tuple
    extension_seconds: Dict[str, float] = field(default_factory=dict)

    base_url = property(lambda self: self.running.base_url)
    log_path = property(lambda self: self.running.log_path)
    startup_seconds = property(lambda self: self.running.startup_seconds)
    webui_dir = property(lambda self: self.running.webui_dir)
    python = property(lambda self: self.running.python)

    def log_text(self) -> str:
        return self.running.log_text()

    def get(self, path: str, auth: bool = True, timeout: float = 60):
        import requests

        return requests.get(self.base_url + path, auth=self.auth if auth else None, timeout=timeout)

    def post(self, path: str, auth: bool = True, timeout: float = 300, **kwargs):
        import requests

        return requests.post(self.base_url + path, auth=self.auth if auth else None, timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def host_models(host_setup, tiny_sam) -> Dict[str, str]:
    """Tiny SAM and GroundingDINO checkpoints in the host's models/sam and models/grounding-dino, put
    there before the host starts (the GroundingDINO one uses the bundled BERT vocabulary)."""
    from tests.fixtures.text_prompt_fixtures import write_tiny_gdino

    models = host_setup.webui_dir / "models"
    (models / "sam").mkdir(parents=True, exist_ok=True)
    sam = models / "sam" / "tiny_sam.pth"
    shutil.copy(tiny_sam[0], sam)
    gdino = models / "grounding-dino" / "groundingdino_swint_ogc.pth"
    if not gdino.exists():
        write_tiny_gdino(gdino.parent, gdino.name, vocab_size=BUNDLED_VOCAB_SIZE)
    # The same weights re-saved the way torch >= 2.4 writes zips (an extra ".format_version"
    # record): A1111's torch.load checker refuses such a file, Forge has no checker.
    newer = models / "sam" / "tiny_sam_newer_torch.pth"  # sorts after tiny_sam.pth, the panel's default
    shutil.copy(tiny_sam[0], newer)
    with zipfile.ZipFile(newer, "a") as archive:
        archive.writestr(f"{archive.namelist()[0].split('/')[0]}/.format_version", "1")
    return {"sam": sam.name, "gdino": gdino.name, "newer_torch_sam": newer.name}


@pytest.fixture(scope="session")
def webui(host_setup, host_models) -> RealHost:
    name = host_setup.name
    log_path = ARTIFACTS / f"{name}-{time.strftime('%H%M%S')}.log"
    running = hosts.start_host(name, extra_args=["--api-auth", f"{AUTH[0]}:{AUTH[1]}"], log_path=log_path,
                               timeout=float(os.environ.get("SAM_REAL_HOSTS_START_TIMEOUT", "900")))
    host = RealHost(name, running, AUTH)
    held_since = time.monotonic()
    try:
        host.extension_seconds = running.extension_seconds()
        reported = hosts.startup_total(host.log_text())
        ours = ", ".join(f"{key} {value:.2f}s" for key, value in sorted(host.extension_seconds.items())) or "none reported"
        note(f"{name}: start-up {running.startup_seconds:.0f}s until it served "
             f"(host's own total {reported}s); our extension's records: {ours} (log {log_path})")
        yield host
    finally:
        code = running.stop()
        note(f"{name}: the tests held the host {time.monotonic() - held_since:.0f}s after start-up; stopped (exit {code})")
