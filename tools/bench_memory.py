"""Memory while loading a checkpoint and using it, ours vs the reference loaders, one fresh process each.

A child process imports everything first, then records its resident set (RSS) as the baseline,
loads the file while a thread samples RSS every 2 ms (``ru_maxrss`` is checked too), and records
RSS after the load and after the first use (an encode; for GroundingDINO a text prompt). Figures
are MiB above the baseline. Linux only (RSS is read from /proc/self/statm).

Checkpoints are random weights at real size in the official layouts, written one model at a
time into a temporary folder and deleted after its two measurements (ViT-H is a 2.4 GB file).
SAM 2.1 files are written by Meta's ``sam2`` package (video weights included, as in the
published files) and its reference loader (``build_sam2``) runs in the oracle venv
(.venv/sam2-oracle, torch >= 2.5.1); without that venv SAM 2.1 is skipped.

    python tools/bench_memory.py                      # every model (what ./benchmark.sh memory runs)
    python tools/bench_memory.py "SAM ViT-H" MobileSAM  # some of them
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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
        from tools.fixtures.gdino_checkpoints import reference_args
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
    elif family == "sam2":  # in the oracle venv: Meta's sam2 package
        import warnings
        warnings.filterwarnings("ignore")
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor
        load = lambda: build_sam2(args["config"], path, device="cpu", mode="eval")
        def use(model):
            predictor = SAM2ImagePredictor(model)
            predictor.set_image(image)
            predictor.predict(point_coords=np.array([[500.0, 400.0]]), point_labels=np.array([1]))
    else:
        import importlib, warnings
        warnings.filterwarnings("ignore")
        package, variant = args["package"], args["variant"]
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
            timeout: float = 900, reference: Optional[Mapping] = None) -> Dict[str, float]:
    """Bytes above the child's baseline: load_peak, after_load, use_peak, after_use; and load_s.

    side: "ours" (through the Engine) or "reference" (the official package's loader);
    family: "sam", "sam_hq", "mobile_sam", "sam2" or "gdino";
    reference: what the reference loader needs ({"package", "variant"} for the SAM packages,
    {"config"} for sam2, whose reference runs in the oracle venv).
    """
    arguments = {"side": side, "family": family, "path": str(path), "text_dir": str(text_dir or ""), "use": use,
                 **(reference or {})}
    if side == "reference" and family == "sam2":
        from tools.fixtures.sam2_checkpoints import ORACLE_PYTHON

        python = str(ORACLE_PYTHON)
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    else:
        python = sys.executable
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    completed = subprocess.run([python, "-c", CHILD, json.dumps(arguments)], cwd=str(ROOT), env=env,
                               capture_output=True, text=True, timeout=timeout)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"{side} {family} measurement failed:\n{completed.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ----------------------------------------------------------------------------- the models at real size

@dataclass(frozen=True)
class BenchModel:
    """One row pair of the table: how to write its file, and which reference loader reads it."""

    family: str  # ours: "sam" | "sam_hq" | "mobile_sam" | "sam2" | "gdino"
    file_name: str
    reference_name: str  # the package whose loader is measured beside ours
    reference: Mapping = field(default_factory=dict)  # what the child's reference branch needs
    #: writes the checkpoint into a folder: (its path, the text-encoder folder the reference needs or None)
    write: Callable[[Path, str], Tuple[Path, Optional[Path]]] = None  # type: ignore[assignment]


def _write_sam(shape_name: str):
    def write(folder: Path, file_name: str) -> Tuple[Path, Optional[Path]]:
        from tools.fixtures import sam_checkpoints

        model = sam_checkpoints.build_reference_sam(getattr(sam_checkpoints, shape_name), seed=0)
        return sam_checkpoints.save_state_dict(model.state_dict(), folder / file_name), None
    return write


def _write_hq(shape_name: str):
    def write(folder: Path, file_name: str) -> Tuple[Path, Optional[Path]]:
        from tools.fixtures import hq_checkpoints

        model = hq_checkpoints.build_reference_hq_sam(hq_checkpoints.HqShape(getattr(hq_checkpoints, shape_name)), seed=0)
        return hq_checkpoints.save_state_dict(model.state_dict(), folder / file_name), None
    return write


def _write_mobile_sam(folder: Path, file_name: str) -> Tuple[Path, Optional[Path]]:
    from tools.fixtures.hq_checkpoints import build_reference_mobile_sam, save_state_dict

    return save_state_dict(build_reference_mobile_sam(seed=0).state_dict(), folder / file_name), None


def _write_gdino(folder: Path, file_name: str) -> Tuple[Path, Optional[Path]]:
    """Swin-T with a bert-base-sized BERT, as in groundingdino_swint_ogc.pth.

    The reference builds BERT with from_pretrained(): a bert-base-sized folder stands in for the
    download, with the bundled (bert-base-uncased) vocabulary so both sides tokenize alike.
    """
    from local_groundingdino.tokenizer import BUNDLED_VOCAB
    from tools.fixtures.gdino_checkpoints import TinyBert, build_reference_gdino, save_checkpoint, write_text_encoder_dir

    vocab = BUNDLED_VOCAB.read_text(encoding="utf-8").splitlines()
    text_dir = write_text_encoder_dir(folder / "bert-base", vocab=vocab,
                                      shape=TinyBert(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072))
    return save_checkpoint(build_reference_gdino("swin_t", text_dir, seed=0), folder / file_name), text_dir


def _write_sam2(trunk_name: str):
    def write(folder: Path, file_name: str) -> Tuple[Path, Optional[Path]]:
        from tools.fixtures import sam2_checkpoints

        path = folder / file_name
        sam2_checkpoints.run_oracle({"trunk": getattr(sam2_checkpoints, trunk_name), "checkpoint": str(path), "seed": 0},
                                    folder / "oracle-work")
        return path, None
    return write


def _sam(variant: str) -> dict:
    return {"package": "segment_anything", "variant": variant}


#: label -> model, in the table's order (smallest file of each family first).
MODELS: Dict[str, BenchModel] = {
    "SAM ViT-B": BenchModel("sam", "sam_vit_b_random.pth", "segment-anything", _sam("vit_b"), _write_sam("VIT_B")),
    "SAM ViT-L": BenchModel("sam", "sam_vit_l_random.pth", "segment-anything", _sam("vit_l"), _write_sam("VIT_L")),
    "SAM ViT-H": BenchModel("sam", "sam_vit_h_random.pth", "segment-anything", _sam("vit_h"), _write_sam("VIT_H")),
    "MobileSAM": BenchModel("mobile_sam", "mobile_sam_random.pt", "mobile_sam",
                            {"package": "mobile_sam", "variant": "vit_t"}, _write_mobile_sam),
    "HQ-SAM ViT-B": BenchModel("sam_hq", "sam_hq_vit_b_random.pth", "segment-anything-hq",
                               {"package": "segment_anything_hq", "variant": "vit_b"}, _write_hq("VIT_B")),
    "HQ-SAM ViT-H": BenchModel("sam_hq", "sam_hq_vit_h_random.pth", "segment-anything-hq",
                               {"package": "segment_anything_hq", "variant": "vit_h"}, _write_hq("VIT_H")),
    "GroundingDINO Swin-T": BenchModel("gdino", "groundingdino_swint_random.pth", "groundingdino", {}, _write_gdino),
    "SAM 2.1 Hiera-T": BenchModel("sam2", "sam2.1_hiera_tiny_random.pt", "sam2 (build_sam2)",
                                  {"config": "configs/sam2.1/sam2.1_hiera_t.yaml"}, _write_sam2("HIERA_T_TRUNK")),
    "SAM 2.1 Hiera-B+": BenchModel("sam2", "sam2.1_hiera_base_plus_random.pt", "sam2 (build_sam2)",
                                   {"config": "configs/sam2.1/sam2.1_hiera_b+.yaml"}, _write_sam2("HIERA_B_PLUS_TRUNK")),
    "SAM 2.1 Hiera-L": BenchModel("sam2", "sam2.1_hiera_large_random.pt", "sam2 (build_sam2)",
                                  {"config": "configs/sam2.1/sam2.1_hiera_l.yaml"}, _write_sam2("HIERA_L_TRUNK")),
}


def _write_in_child(label: str, folder: Path) -> Tuple[Path, Optional[Path]]:
    """Write ``label``'s checkpoint in a child process, so that building the reference model
    (random init, a full copy of the weights) leaves no garbage in this one."""
    script = ("import json, sys; from pathlib import Path; from tools.bench_memory import MODELS; "
              "model = MODELS[sys.argv[1]]; path, text_dir = model.write(Path(sys.argv[2]), model.file_name); "
              "print('WRITTEN ' + json.dumps([str(path), str(text_dir) if text_dir else None]))")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    completed = subprocess.run([sys.executable, "-c", script, label, str(folder)], cwd=str(ROOT), env=env,
                               capture_output=True, text=True, timeout=3600)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("WRITTEN ")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"writing {label} failed:\n{completed.stderr[-3000:]}")
    path, text_dir = json.loads(lines[-1][len("WRITTEN "):])
    return Path(path), Path(text_dir) if text_dir else None


def memory_table(labels: Optional[Sequence[str]] = None) -> None:
    """Print peak RSS while loading (and RSS after the load and after the first use) per model,
    ours vs the reference loader, each in a fresh process on the same file.

    ``labels``: keys of :data:`MODELS` (default: all). One model's file exists at a time.
    """
    from tools.fixtures.sam2_checkpoints import oracle_available

    unknown = [label for label in labels or () if label not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    mib = lambda value: value / 2**20  # noqa: E731
    print("CPU, fp32; MiB above the process's baseline after its imports; x = multiple of the file size", flush=True)
    print(f"  {'model':<22}{'file':>8}  {'loader':<20}{'load peak':>16}{'after load':>12}{'use peak':>10}"
          f"{'after use':>11}{'load s':>8}   use", flush=True)
    for label in labels or list(MODELS):
        model = MODELS[label]
        if model.family == "sam2" and not oracle_available():
            print(f"  {label:<22} skipped: the SAM 2 oracle venv (.venv/sam2-oracle) is absent", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix="sam-memory-") as tmp:
            folder = Path(tmp) / model.family
            folder.mkdir()
            try:
                path, text_dir = _write_in_child(label, folder)
            except Exception as error:
                print(f"  {label:<22} not written: {str(error).splitlines()[-1]}", flush=True)
                continue
            size = path.stat().st_size
            use = "text prompt 'hand . face', 800x1067" if model.family == "gdino" else "encode 1024x768 + 1 click"
            for side, loader in (("ours", "ours"), ("reference", model.reference_name)):
                try:
                    figures = measure(side, model.family, path, text_dir=text_dir, reference=model.reference, timeout=3600)
                except Exception as error:  # one failed child must not hide the others
                    print(f"  {label:<22}{mib(size):>8.0f}  {loader:<20} failed: {str(error).splitlines()[-1]}", flush=True)
                    continue
                peak = figures["load_peak"]
                print(f"  {label:<22}{mib(size):>8.0f}  {loader:<20}{mib(peak):>9.0f} {peak / size:>4.2f}x"
                      f"{mib(figures['after_load']):>12.0f}{mib(figures['use_peak']):>10.0f}"
                      f"{mib(figures['after_use']):>11.0f}{figures['load_s']:>8.1f}   {use}", flush=True)
                print("JSON " + json.dumps({"model": label, "loader": loader, "file_bytes": size, **figures}),
                      file=sys.stderr, flush=True)
        gc.collect()


if __name__ == "__main__":
    memory_table(sys.argv[1:] or None)
