"""Batch on a Ray cluster (issue 18): a real local cluster on 127.0.0.1, started once for the
module (2 CPUs, a small object store), and the tiny random-weight SAM checkpoint.

The same outputs byte for byte as the single-process batch, a worker killed mid-run, a driver
stopped by Ctrl-C while connecting, while its pool warms up and mid-run (each when a phase line
or a file shows, no fixed wait) and rerun, bad files, an image whose worker dies on every try;
inputs and output as file:// URIs and in S3 (moto on 127.0.0.1), a URI that cannot be opened;
and Ray never imported by what the WebUI or the app loads.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from tests.fixtures.api_fixtures import api_engine, api_model_dir, png_bytes, sample_image  # noqa: F401
from tests.test_batch import digest_tree, make_folder, options

ROOT = Path(__file__).resolve().parents[1]
#: bookkeeping whose line order follows the order images finished in
UNORDERED = {".sam-batch-manifest.txt", ".sam-batch-state.jsonl", "batch_report.json"}
#: The Ray batch is a command of its own, not part of either WebUI. Under both stacks' pins
#: (pydantic 1 and 2, their numpy) run the tests that show Ray works there: the outputs of the
#: single-process batch, bad files, a stopped stream, Ray never imported by the extension. The
#: driver's own robustness (workers that die, Ctrl-C, URIs, S3) does not depend on those pins
#: and runs once, under this stack: about 7 of the other suite's 40 minutes, on 2 cores.
ROBUSTNESS_STACK = "a1111"
robustness = pytest.mark.skipif(
    os.environ.get("SAM_TEST_STACK", ROBUSTNESS_STACK) != ROBUSTNESS_STACK,
    reason=f"the Ray driver's robustness runs under the {ROBUSTNESS_STACK} stack only",
)


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


def test_a_ctrl_c_while_the_command_is_still_loading_exits_130_with_a_message(monkeypatch, capsys):
    # the seconds torch and the rest take to import come before any handler of ours
    from sd_webui_sam import __main__ as entry

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(entry.importlib, "import_module", interrupted)
    assert entry.main(["batch", "in", "-o", "out", "--ray"]) == 130
    assert "interrupted while 'batch' was starting; nothing was done" in capsys.readouterr().err


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


@robustness
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


class Driver:
    """``python -m sd_webui_sam batch ... --ray ADDRESS`` in a subprocess, its output read as it comes."""

    def __init__(self, cluster, folder, out, model_dir, outputs="mask,coco"):
        command = [sys.executable, "-m", "sd_webui_sam", "batch", str(folder), "-o", str(out), "--model-dir",
                   str(model_dir), "-m", "tiny_sam.pth", "--point", "20,20", "--outputs", outputs,
                   "--device", "cpu", "--ray", cluster, "--ray-actors", "1"]
        self.process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in iter(self.process.stdout.readline, b""):
            self.lines.append(line.decode(errors="replace"))

    @property
    def output(self):
        return "".join(self.lines)

    def wait_until(self, condition, what, timeout=300):
        """Polls ``condition`` (no fixed wait); a driver that ends or a timeout first fails the test."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"the driver ended before {what}:\n{self.output[-6000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{self.output[-6000:]}"
            time.sleep(0.05)

    def interrupt(self):
        """Ctrl-C; (exit status, output)."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=120)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        self.reader.join(timeout=10)
        return self.process.returncode, self.output


def phase_line(driver, phase):
    return lambda: any(line.startswith(f"ray: {phase}") for line in driver.lines)


@robustness
@pytest.mark.parametrize("phase", ["connecting", "starting"])
def test_a_ctrl_c_before_any_image_is_done_stops_at_once_with_a_report(cluster, api_model_dir, tmp_path, phase):
    # "connecting": the signal lands in ray.init; "starting": the actor pool is still warming up
    # (its actor process starting, importing, loading the model). Once, a Ctrl-C there ended the
    # driver with exit 1 and no report (issue #18); the stop used to wait for the first image.
    from sd_webui_sam.batch_ray import run_batch_ray

    folder = make_folder(tmp_path / "in", 3)
    out = tmp_path / "out"
    driver = Driver(cluster, folder, out, api_model_dir)
    driver.wait_until(phase_line(driver, phase), f"'ray: {phase}' line")
    code, output = driver.interrupt()
    assert code == 130, output[-6000:]
    assert "interrupted" in output and "Traceback" not in output
    assert "0 done" in output and "- interrupted; run again to resume." in output
    if phase == "connecting":
        assert "ray: starting" not in output  # the stop is read as soon as ray.init returns: no pool
    report = json.loads((out / "batch_report.json").read_text())
    assert report["interrupted"] and report["done"] == 0 and report["total"] == 3 and not report["failed"]
    assert not list(out.glob("*.png")) and not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    again = run_batch_ray(options([folder], out, outputs=("mask", "coco")), settings(api_model_dir),
                          ray_options(cluster, actors=1))
    assert again.done == 3 and again.skipped == 0 and not again.interrupted and not again.failed
    assert len(list(out.glob("*_mask.png"))) == 3 * 3


@robustness
def test_an_interrupted_driver_reruns_only_what_is_missing(cluster, api_model_dir, tmp_path):
    from sd_webui_sam.batch_ray import run_batch_ray

    folder = make_folder(tmp_path / "in", 6)
    out = tmp_path / "out"
    driver = Driver(cluster, folder, out, api_model_dir)
    driver.wait_until(phase_line(driver, "running"), "'ray: running' line")  # the first image is answered
    code, output = driver.interrupt()
    assert code == 130, output[-6000:]
    first = json.loads((out / "batch_report.json").read_text())
    assert first["interrupted"] and 1 <= first["done"] < 6
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no partial output
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.png")}
    assert 3 <= len(before) < 6 * 3
    report = run_batch_ray(options([folder], out, outputs=("mask", "coco")), settings(api_model_dir),
                           ray_options(cluster, actors=1))
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.png")}
    assert sorted(after) == sorted(f"img{i:02d}_{c}_mask.png" for i in range(6) for c in range(3))
    assert {name: after[name] for name in before} == before  # nothing written twice
    assert report.outputs_written == len(after) - len(before)
    assert report.skipped == first["done"] and not report.failed
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == len(coco["annotations"]) == 6




class _SlowRows:
    def __call__(self, batch):
        time.sleep(0.3)
        return batch


def test_a_stream_left_early_has_its_executor_stopped_before_ray_shuts_down(cluster):
    # Ray ends a process with exit 1 (losing its unflushed stdout) when one of its threads calls
    # into Ray after ray.shutdown. A stream left before its end keeps Ray Data's executor thread
    # running until the dataset is collected: the exit 1 after "ray: stopping" (issue #18), seen
    # only on a loaded machine. _stop_stream ends it at once.
    import ray

    from sd_webui_sam.batch_ray import _stop_stream

    def executors():
        return [t.name for t in threading.enumerate() if t.name.startswith("StreamingExecutor")]

    assert ray.is_initialized()  # the cluster fixture's own driver, this process
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.range(40, override_num_blocks=40).map_batches(
        _SlowRows, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5)
    rows = iter(dataset.iter_rows())
    next(rows), next(rows)
    rows.close()  # a stop: the rest is not wanted
    time.sleep(1)
    assert executors(), "the executor stopped by itself: this test no longer shows anything"
    _stop_stream(dataset)
    assert executors() == []
    _stop_stream(dataset)  # twice is harmless

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


def uri_options(inputs, output, **kwargs):
    """batch options whose inputs and output stay as typed (test_batch's options make them Paths)."""
    made = options([], "unused", **kwargs)
    made.inputs, made.output_dir = list(inputs), output
    return made


#: what the URI tests write (few kinds: each run is short)
URI_KINDS = ("mask", "cutout", "coco")


@pytest.fixture(scope="module")
def plain_run(cluster, api_model_dir, tmp_path_factory):
    """(input folder, output folder, report) of a run on three images given as plain local paths."""
    from sd_webui_sam.batch_ray import run_batch_ray

    root = tmp_path_factory.mktemp("plain")
    folder = make_folder(root / "in", 3)
    report = run_batch_ray(options([folder], root / "out", outputs=URI_KINDS), settings(api_model_dir),
                           ray_options(cluster, actors=1))
    assert report.done == 3 and not report.failed
    return folder, root / "out", report


@robustness
def test_file_uris_give_the_outputs_of_plain_paths(cluster, api_model_dir, plain_run, tmp_path):
    from sd_webui_sam.batch_ray import run_batch_ray

    folder, plain_out, plain = plain_run
    uri = run_batch_ray(uri_options([folder.as_uri()], (tmp_path / "uri").as_uri(), outputs=URI_KINDS),
                        settings(api_model_dir), ray_options(cluster, actors=1))
    assert uri.done == 3 and uri.output_dir == str(tmp_path / "uri")
    expected = {k: v for k, v in digest_tree(plain_out).items() if k not in UNORDERED}
    assert {k: v for k, v in digest_tree(tmp_path / "uri").items() if k not in UNORDERED} == expected
    assert comparable(uri) == comparable(plain)


def test_a_uri_that_cannot_be_opened_is_one_line_of_error(api_model_dir, tmp_path, capsys):
    from sd_webui_sam.batch_ray import main

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main(["nosuchfs://bucket/in", "-o", str(tmp_path / "out"), "--model-dir", str(api_model_dir),
                     "-m", "tiny_sam.pth", "--point", "20,20", "--device", "cpu", "--ray"])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1] == "error: Cannot open nosuchfs://bucket/in: Unrecognized filesystem type in URI: nosuchfs://bucket/in"


@pytest.fixture
def s3_server(monkeypatch):
    """A moto S3 server on 127.0.0.1 and a URI maker for one bucket in it (credentials in the URI)."""
    moto_server = pytest.importorskip("moto.server", reason="moto is not installed (requirements/ray.txt)")
    import logging

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    try:
        yield lambda key: (f"s3://testing:testing@bucket/{key}?endpoint_override=127.0.0.1:{port}&scheme=http"
                           f"&region=us-east-1&allow_bucket_creation=true")
    finally:
        server.stop()


@robustness
def test_an_s3_round_trip_gives_the_local_outputs_and_resumes(cluster, api_model_dir, plain_run, s3_server):
    from pyarrow import fs

    from sd_webui_sam.batch_ray import run_batch_ray

    folder, plain_out, _ = plain_run
    s3, _ = fs.FileSystem.from_uri(s3_server(""))
    s3.create_dir("bucket")
    for path in sorted(folder.iterdir()):
        with s3.open_output_stream(f"bucket/in/{path.name}") as stream:
            stream.write(path.read_bytes())
    with s3.open_output_stream("bucket/in/notes.txt") as stream:
        stream.write(b"not an image")
    remote = run_batch_ray(uri_options([s3_server("in")], s3_server("out"), outputs=URI_KINDS),
                           settings(api_model_dir), ray_options(cluster, actors=1))
    assert remote.done == 3 and not remote.failed
    assert remote.ignored == ["s3://bucket/in/notes.txt"]
    assert remote.output_dir == "s3://bucket/out" and remote.report == "s3://bucket/out/batch_report.json"

    def stored(prefix):
        found = s3.get_file_info(fs.FileSelector(prefix, recursive=True))
        return {f.path[len(prefix) + 1:]: s3.open_input_stream(f.path).read() for f in found
                if f.type == fs.FileType.File}

    outputs = stored("bucket/out")
    expected = {k: v for k, v in digest_tree(plain_out).items() if k not in UNORDERED}
    assert {k: hashlib.sha256(v).hexdigest() for k, v in outputs.items() if k not in UNORDERED} == expected
    assert sorted(outputs[".sam-batch-manifest.txt"].decode().splitlines()) == sorted(
        (plain_out / ".sam-batch-manifest.txt").read_text().splitlines())
    saved = json.loads(outputs["batch_report.json"])
    assert saved["done"] == 3 and saved["output_dir"] == "s3://bucket/out" and "testing" not in json.dumps(saved)

    again = run_batch_ray(uri_options([s3_server("in")], s3_server("out"), outputs=URI_KINDS),
                          settings(api_model_dir), ray_options(cluster, actors=1))
    assert again.skipped == 3 and again.outputs_written == 0
    assert {k: v for k, v in stored("bucket/out").items() if k not in UNORDERED} == {
        k: v for k, v in outputs.items() if k not in UNORDERED}


#: a driver whose workers die (os._exit) on every try of doomed.png, counting the tries in a file
#: (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in its environment keeps Ray on the loopback address)
DOOMED_DRIVER = """
import json, os, sys
import ray
from sd_webui_sam.batch import BatchOptions
from sd_webui_sam.batch_ray import RayOptions, run_batch_ray, _PACKAGES, _ROOT
from sd_webui_sam.settings import EngineSettings

address, folder, out, model_dir, tries, report_path = sys.argv[1:]

def sabotage():
    import sd_webui_sam.batch_ray as batch_ray
    process_file = batch_ray.process_file

    def dies_on_doomed(engine, options, data, source, *args):
        if str(source.path).endswith("doomed.png"):
            with open(os.environ["DOOMED_TRIES"], "a") as handle:
                handle.write("try\\n")
            os._exit(1)
        return process_file(engine, options, data, source, *args)
    batch_ray.process_file = dies_on_doomed

ray.init(address=address, _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False,
         runtime_env={"py_modules": [str(_ROOT / p) for p in _PACKAGES], "env_vars": {"DOOMED_TRIES": tries},
                      "worker_process_setup_hook": sabotage})
options = BatchOptions(inputs=[folder], output_dir=out, model="tiny_sam.pth", points=[(20.0, 20.0)],
                       outputs=("mask",))
report = run_batch_ray(options, EngineSettings(user_model_dir=model_dir, device="cpu"),
                       RayOptions(address=address, actors=2, max_retries=1))
with open(report_path, "w") as handle:  # not stdout: Ray prints its workers' deaths there, late
    json.dump(report.to_dict(), handle)
"""



def run_doomed_driver(source, cluster, folder, tmp_path, api_model_dir):
    """A DOOMED_DRIVER variant run over ``folder``: (its report, the lines its dying workers wrote)."""
    tries, report = tmp_path / "tries.txt", tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-c", source, cluster, str(folder), str(tmp_path / "out"),
                           str(api_model_dir), str(tries), str(report)], cwd=ROOT, capture_output=True, text=True,
                          timeout=420, env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return json.loads(report.read_text()), tries.read_text().splitlines()

@robustness
def test_an_image_whose_worker_always_dies_is_retried_a_bounded_number_of_times(cluster, api_model_dir, tmp_path):
    folder = make_folder(tmp_path / "in", 2)
    (folder / "zz_doomed.png").write_bytes((folder / "img00.png").read_bytes())  # last: the others go first
    report, tries = run_doomed_driver(DOOMED_DRIVER, cluster, folder, tmp_path, api_model_dir)
    assert [Path(f["source"]).name for f in report["failed"]] == ["zz_doomed.png"]
    assert "died" in report["failed"][0]["error"]
    assert report["done"] == 2 and not report["interrupted"]
    assert 2 <= len(tries) <= 4  # retried (max_retries=1), and not for ever
    assert sorted(p.name for p in (tmp_path / "out").glob("*_mask.png")) == sorted(
        f"img{i:02d}_{c}_mask.png" for i in range(2) for c in range(3))


#: DOOMED_DRIVER with groups of three images per actor call (encoded together): a worker dies on
#: every try of a group that holds doomed.png
GROUPED_DOOMED_DRIVER = DOOMED_DRIVER.replace(
    '    batch_ray.process_file = dies_on_doomed\n',
    '    batch_ray.process_file = dies_on_doomed\n'
    '    process_group = batch_ray.process_group\n\n'
    '    def group_dies_on_doomed(engine, options, items, *args):\n'
    '        if any(str(source.path).endswith("doomed.png") for _, source, _ in items):\n'
    '            with open(os.environ["DOOMED_TRIES"], "a") as handle:\n'
    '                handle.write("group\\n")\n'
    '            os._exit(1)\n'
    '        return process_group(engine, options, items, *args)\n'
    '    batch_ray.process_group = group_dies_on_doomed\n',
).replace('EngineSettings(user_model_dir=model_dir, device="cpu")',
          'EngineSettings(user_model_dir=model_dir, device="cpu", encode_batch_size=3)')


@robustness
def test_a_group_whose_worker_dies_is_retried_one_image_at_a_time(cluster, api_model_dir, tmp_path):
    assert GROUPED_DOOMED_DRIVER.count("group_dies_on_doomed") == 2 and "encode_batch_size=3" in GROUPED_DOOMED_DRIVER
    folder = make_folder(tmp_path / "in", 5)
    (folder / "zz_doomed.png").write_bytes((folder / "img00.png").read_bytes())
    report, lines = run_doomed_driver(GROUPED_DOOMED_DRIVER, cluster, folder, tmp_path, api_model_dir)
    assert [Path(f["source"]).name for f in report["failed"]] == ["zz_doomed.png"]
    assert report["done"] == 5 and not report["interrupted"]
    assert "group" in lines and "try" in lines  # died in its group, then alone
    assert len(lines) <= 8
    assert sorted(p.name for p in (tmp_path / "out").glob("*_mask.png")) == sorted(
        f"img{i:02d}_{c}_mask.png" for i in range(5) for c in range(3))
