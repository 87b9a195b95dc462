"""What the browser tests share: the standalone app with the tiny SAM, one per test module."""
from __future__ import annotations

import shutil

import pytest

from tools import browser_driver as driver


@pytest.fixture(scope="module")
def app_url(tiny_sam, tmp_path_factory):
    if driver.chromium_path() is None:
        pytest.skip("Debian's chromium is not installed")
    model_dir = tmp_path_factory.mktemp("browser_models")
    shutil.copy(tiny_sam[0], model_dir / "tiny_sam.pth")
    log = tmp_path_factory.mktemp("browser_logs") / "app.log"
    with driver.standalone_app(model_dir, log_path=log, timeout_s=300) as url:  # a loaded CI machine
        yield url
