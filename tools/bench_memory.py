"""Memory while loading a checkpoint and using it, ours vs the reference loaders, one fresh process each.

A child process imports everything first, then records its resident set (RSS) as the baseline,
loads the file while a thread samples RSS every 2 ms (``ru_maxrss`` is checked too), and records
RSS after the load and after the first use (an encode; for GroundingDINO a text prompt). Figures
are MiB above the baseline. Linux only (RSS is read from /proc/self/statm).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

ROOT = Path(__file__).resolve().parents[1]

#: Run in a fresh interpreter: argv[1] is a JSON object {"side", "family", "path", "text_dir", "use"}.
CHILD = r'''
import json, os, resource, sys, threading, time
args = json.loads(sys.argv[1])
import numpy as np
import torch
torch.set_grad_enabled(False)
PAGE = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE

class Sampler:
    def __init__(self):
        self.peak, self.running = rss(), True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
    def run(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)
    def stop(self):
        self.running = False
        self.thread.join()
        return max(self.peak, rss())

path, family, side = args["path"], args["family"], args["side"]
image = np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
if side == "ours":
    from sd_webui_sam.engine import Engine
    from sd_webui_sam.predictor import Prompts
    from sd_webui_sam.settings import EngineSettings
    directory = os.path.dirname(path)
    settings = EngineSettings(user_model_dir=directory, device="cpu", gdino_user_model_dir=directory)
    engine = Engine(settings)
    name = os.path.basename(path)
    if family == "gdino":
        load = lambda: engine.detectors.detector(name)
        use = lambda model: engine.detect(name, image, "hand . face", box_threshold=0.3)
    else:
        load = lambda: engine.store.get(name)
        use = lambda model: engine.segment(name, image, Prompts(points=[(500.0, 400.0)], labels=[1]))
else:
    if family == "gdino":
        from tests.fixtures.gdino_checkpoints import reference_args
        from groundingdino.models import build_model
        from groundingdino.util.utils import clean_state_dict
        import contextlib, io
        def load():  # what the reference extension's GroundingDINO loader does
            with contextlib.redirect_stdout(io.StringIO()):
                model = build_model(reference_args("swin_t", args["text_dir"]))
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # same tensors; runs no code
            model.load_state_dict(clean_state_dict(checkpoint["model"]), strict=False)
            return model.eval()
        def use(model):
            pixels = torch.randn(1, 3, 800, 1067)
            model(pixels, captions=["hand . face ."])
    else:
        import importlib, warnings
        warnings.filterwarnings("ignore")
        package, variant = {"sam": ("segment_anything", "vit_b"), "sam_hq": ("segment_anything_hq", "vit_b"),
                            "mobile_sam": ("mobile_sam", "vit_t")}[family]
        module = importlib.import_module(package)
        load = lambda: module.sam_model_registry[variant](checkpoint=path).eval()
        def use(model):
            predictor = module.SamPredictor(model)
            predictor.set_image(image)
            predictor.predict(point_coords=np.array([[500.0, 400.0]]), point_labels=np.array([1]))
import gc; gc.collect()
baseline, max_before = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
sampler = Sampler()
start = time.perf_counter()
model = load()
load_s = time.perf_counter() - start
load_peak = sampler.stop()
max_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if max_after > max_before:  # the kernel's own peak is exact when it rose during the load
    load_peak = max(load_peak, max_after)
after_load = rss()
result = {"load_peak": load_peak - baseline, "after_load": after_load - baseline, "load_s": load_s}
if args.get("use"):
    sampler = Sampler()
    use(model)
    result["use_peak"] = sampler.stop() - baseline
    result["after_use"] = rss() - baseline
print("RESULT " + json.dumps(result))
'''


def measure(side: str, family: str, path: Path, *, text_dir: Optional[Path] = None, use: bool = True,
            timeout: float = 900) -> Dict[str, float]:
    """Bytes above the child's baseline: load_peak, after_load, use_peak, after_use; and load_s.

    side: "ours" (through the Engine) or "reference" (the official package's loader);
    family: "sam", "sam_hq", "mobile_sam" or "gdino".
    """
    arguments = {"side": side, "family": family, "path": str(path), "text_dir": str(text_dir or ""), "use": use}
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    completed = subprocess.run([sys.executable, "-c", CHILD, json.dumps(arguments)], cwd=str(ROOT), env=env,
                               capture_output=True, text=True, timeout=timeout)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"{side} {family} measurement failed:\n{completed.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _write_checkpoints(directory: Path) -> Dict[str, tuple]:
    """Random weights at real size in the official key layouts: label -> (family, path, text_dir or None)."""
    import gc

    from local_groundingdino.tokenizer import BUNDLED_VOCAB
    from tests.fixtures.gdino_checkpoints import TinyBert, build_reference_gdino, save_checkpoint, write_text_encoder_dir
    from tests.fixtures.hq_checkpoints import BENCHMARK_MODELS, build_reference_mobile_sam
    from tests.fixtures.sam_checkpoints import VIT_B, build_reference_sam, save_state_dict

    files = {}
    for label, family, build, name in (
        ("SAM ViT-B", "sam", lambda: build_reference_sam(VIT_B, seed=0), "sam_vit_b_random.pth"),
        ("MobileSAM", "mobile_sam", lambda: build_reference_mobile_sam(seed=0), "mobile_sam_random.pt"),
        ("HQ-SAM ViT-B", "sam_hq", lambda: BENCHMARK_MODELS["HQ-SAM ViT-B"][0](0), "sam_hq_vit_b_random.pth"),
    ):
        folder = directory / family
        files[label] = (family, save_state_dict(build().state_dict(), folder / name), None)
        gc.collect()
    # The reference builds BERT with from_pretrained(): a bert-base-sized folder stands in for the
    # download, with the bundled (bert-base-uncased) vocabulary so both sides tokenize alike.
    vocab = BUNDLED_VOCAB.read_text(encoding="utf-8").splitlines()
    text_dir = write_text_encoder_dir(directory / "bert-base", vocab=vocab,
                                      shape=TinyBert(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072))
    reference = build_reference_gdino("swin_t", text_dir, seed=0)
    files["GroundingDINO Swin-T"] = ("gdino", save_checkpoint(reference, directory / "gdino" / "groundingdino_swint_random.pth"), text_dir)
    del reference
    gc.collect()
    return files


def memory_table() -> None:
    """Print peak RSS while loading (and RSS after the load and after the first use) per family,
    ours vs the reference loader, each in a fresh process on the same file."""
    import tempfile

    mib = lambda value: value / 2**20  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        files = _write_checkpoints(Path(tmp))
        print("CPU, fp32; MiB above the process's baseline after its imports; x = multiple of the file size")
        print(f"  {'model':<22}{'file':>8}  {'side':<10}{'load peak':>16}{'after load':>12}{'use peak':>10}"
              f"{'after use':>11}{'load s':>8}   use")
        for label, (family, path, text_dir) in files.items():
            size = path.stat().st_size
            use = "text prompt 'hand . face', 800x1067" if family == "gdino" else "encode 1024x768 + 1 click"
            for side in ("ours", "reference"):
                try:
                    figures = measure(side, family, path, text_dir=text_dir)
                except Exception as error:  # one failed child must not hide the others
                    print(f"  {label:<22}{mib(size):>8.0f}  {side:<10} failed: {str(error).splitlines()[-1]}")
                    continue
                peak = figures["load_peak"]
                print(f"  {label:<22}{mib(size):>8.0f}  {side:<10}{mib(peak):>9.0f} {peak / size:>4.2f}x"
                      f"{mib(figures['after_load']):>12.0f}{mib(figures['use_peak']):>10.0f}"
                      f"{mib(figures['after_use']):>11.0f}{figures['load_s']:>8.1f}   {use}")
