import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory):
    """(path to a tiny SAM .pth in the official layout, the reference model with the same weights)."""
    from tools.fixtures.sam_checkpoints import TINY, build_reference_sam, save_state_dict

    reference = build_reference_sam(TINY, seed=0)
    path = save_state_dict(reference.state_dict(), tmp_path_factory.mktemp("sam_models") / "tiny_sam.pth")
    return path, reference


@pytest.fixture
def make_webui():
    """make_webui(**FakeWebUI options) -> a WebUI stand-in with our script loaded and its UI built;
    every one made is closed after the test."""
    from tests.webui_stub.harness import FakeWebUI

    created = []

    def make(**kwargs):
        webui = FakeWebUI(**kwargs)
        created.append(webui)
        webui.load_scripts()
        webui.create_ui()
        return webui

    yield make
    for webui in reversed(created):
        webui.close()
