"""Batch on a Ray cluster (issue 18): a real local cluster on 127.0.0.1, started once for the
module (2 CPUs, a small object store), and the tiny random-weight SAM checkpoint.

The same outputs byte for byte as the single-process batch, a worker killed mid-run, an
interrupted driver rerun, bad files; and Ray never imported by what the WebUI or the app loads.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from tests.fixtures.api_fixtures import api_engine, api_model_dir, png_bytes, sample_image  # noqa: F401
from tests.test_batch import digest_tree, make_folder, options

ROOT = Path(__file__).resolve().parents[1]
#: bookkeeping whose line order follows the order images finished in
UNORDERED = {".sam-batch-manifest.txt", ".sam-batch-state.jsonl", "batch_report.json"}


def test_the_extension_the_app_and_install_never_import_ray():
    # a fresh interpreter: the cluster fixture below imports ray into this one
    code = (
        "import sys\n"
        "from tests.webui_stub.harness import FakeWebUI\n"
        "webui = FakeWebUI(); webui.load_scripts(); webui.create_ui()\n"
        "import install, sd_webui_sam.app, sd_webui_sam.batch, sd_webui_sam.api.routes\n"
        "webui.close()\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


ray = pytest.importorskip("ray", reason="Ray is not installed in this stack (requirements/ray.txt)")


@pytest.fixture(scope="module")
def cluster():
    """The address of a local Ray cluster on 127.0.0.1 that a second driver (a subprocess) can join."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, object_store_memory=100 * 1024**2, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def ray_options(address, **kwargs):
    from sd_webui_sam.batch_ray import RayOptions

    return RayOptions(address=address, **kwargs)


def settings(model_dir):
    from sd_webui_sam.settings import EngineSettings

    return EngineSettings(user_model_dir=model_dir, device="cpu", embedding_cache_entries=16)


def comparable(report) -> dict:
    """A report without what differs between any two runs (timing, the folder's name)."""
    saved = report.to_dict()
    for key in ("seconds", "output_dir", "coco", "report"):
        saved.pop(key)
    saved["files"] = sorted(saved["files"], key=lambda f: f["source"])
    return saved


def test_the_same_outputs_as_the_single_process_batch(cluster, api_engine, api_model_dir, tmp_path):
    from sd_webui_sam.batch import run_batch
    from sd_webui_sam.batch_ray import run_batch_ray

    import torch

    folder = make_folder(tmp_path / "in", 30)
    # each actor has one CPU, so one torch thread; the reference runs with as many, since a sum
    # split over another number of threads rounds differently (scores moved by 1e-6)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_batch(api_engine, options([folder], tmp_path / "single"))
    finally:
        torch.set_num_threads(threads)
    steps = []
    spread = run_batch_ray(options([folder], tmp_path / "ray"), settings(api_model_dir), ray_options(cluster, actors=2),
                           progress=steps.append)
    assert spread.done == single.done == 30 and not spread.failed
    expected = {k: v for k, v in digest_tree(tmp_path / "single").items() if k not in UNORDERED}
    assert {k: v for k, v in digest_tree(tmp_path / "ray").items() if k not in UNORDERED} == expected
    assert len(expected) == 30 * 9 + 1  # 3 candidates x mask, cut-out, blend; and annotations.json
    assert comparable(spread) == comparable(single)
    saved = json.loads((tmp_path / "ray" / "batch_report.json").read_text())
    assert saved["done"] == 30 and len(saved["files"]) == 30
    assert steps[-1].index == steps[-1].total == 30 and "30 done, 0 failed, 0 skipped" in steps[-1].status
    assert "img/s" in steps[-1].status


def test_a_worker_killed_mid_run_is_replaced_and_every_output_exists_once(cluster, api_model_dir, tmp_path):
    from sd_webui_sam.batch_ray import run_batch_ray

    folder = make_folder(tmp_path / "in", 8)
    out = tmp_path / "out"
    killed = []

    def kill_the_first_worker(answer):
        if not killed and answer["pid"]:
            killed.append(answer["pid"])
            os.kill(answer["pid"], signal.SIGKILL)

    report = run_batch_ray(options([folder], out, outputs=("mask", "cutout", "coco")), settings(api_model_dir),
                           ray_options(cluster, actors=2), on_result=kill_the_first_worker)
    assert killed and not report.failed and not report.interrupted
    assert report.done + report.kept == 8
    names = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    expected = sorted(f"img{i:02d}_{c}_{kind}.png" for i in range(8) for c in range(3) for kind in ("mask", "output"))
    assert names == expected  # each exactly once, and nothing else
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    manifest = (out / ".sam-batch-manifest.txt").read_text().splitlines()
    assert sorted(manifest) == expected  # listed once each, even when a retry met a dead worker's file
    coco = json.loads((out / "annotations.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == [f"img{i:02d}.png" for i in range(8)]


def test_an_interrupted_driver_reruns_only_what_is_missing(cluster, api_model_dir, tmp_path):
    from sd_webui_sam.batch_ray import run_batch_ray

    folder = make_folder(tmp_path / "in", 10)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sd_webui_sam", "batch", str(folder), "-o", str(out), "--model-dir",
               str(api_model_dir), "-m", "tiny_sam.pth", "--point", "20,20", "--outputs", "mask,coco",
               "--device", "cpu", "--ray", cluster, "--ray-actors", "1"]
    driver = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        while len(list(out.glob("*_mask.png"))) < 6 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)
        output = driver.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, output[-6000:]
    first = json.loads((out / "batch_report.json").read_text())
    assert first["interrupted"] and first["done"] < 10
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.png")}
    assert 6 <= len(before) < 10 * 3
    report = run_batch_ray(options([folder], out, outputs=("mask", "coco")), settings(api_model_dir),
                           ray_options(cluster, actors=1))
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.png")}
    assert sorted(after) == sorted(f"img{i:02d}_{c}_mask.png" for i in range(10) for c in range(3))
    assert {name: after[name] for name in before} == before  # nothing written twice
    assert report.outputs_written == len(after) - len(before)
    assert report.skipped == first["done"] and not report.failed
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == len(coco["annotations"]) == 10


def huge_png() -> bytes:
    """A PNG whose header declares 100000 x 100000 pixels (its data would never decode)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_files_are_reported_and_the_rest_complete(cluster, api_model_dir, tmp_path):
    from sd_webui_sam.batch_ray import run_batch_ray

    folder = make_folder(tmp_path / "in", 2)
    (folder / "corrupt.png").write_bytes(png_bytes(sample_image(64, 64))[:150])
    (folder / "fake.jpg").write_bytes(b"this is not a jpeg at all")
    (folder / "huge.png").write_bytes(huge_png())
    (folder / "notes.txt").write_text("hello")
    report = run_batch_ray(options([folder], tmp_path / "out", outputs=("mask",)), settings(api_model_dir),
                           ray_options(cluster, actors=2))
    failed = {Path(f["source"]).name: f["error"] for f in report.failed}
    assert sorted(failed) == ["corrupt.png", "fake.jpg", "huge.png"]
    assert "pixels" in failed["huge.png"] and all(failed.values())
    assert [Path(p).name for p in report.ignored] == ["notes.txt"]
    assert report.done == 2 and report.total == 5
    assert len(list((tmp_path / "out").glob("*_mask.png"))) == 6
