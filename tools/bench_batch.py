"""Batch throughput with a text prompt: ``run_batch`` against the reference extension's loop.

Both sides run the same random weights at the released sizes: SAM ViT-B, and GroundingDINO
Swin-T with a bert-base text encoder and the bundled vocabulary. The reference side is what
``dino_batch_process`` does for each file, in its best case (local GroundingDINO, models already
cached, so no install attempt): open as RGBA, GroundingDINO at 800 px on the short side,
``gc.collect``, ``SamPredictor.set_image`` and one ``predict_torch`` over all boxes with three
masks each, then for each of the three candidates the merged mask, the matte and the blend
written as PNG in line. The oracles (segment_anything, groundingdino-py) are test dependencies,
so the product never imports this module.
"""
from __future__ import annotations

import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

CAPTION = "hand . face"
BOXES_PER_IMAGE = 3  # the box threshold is set so that the first image yields about this many


def write_bert_base_dir(directory: Path, seed: int = 0) -> Path:
    """A bert-base-uncased folder (config, random weights, the bundled vocabulary) that
    groundingdino-py loads as ``text_encoder_type``, so nothing is downloaded."""
    from transformers import BertConfig, BertModel

    import local_groundingdino
    from local_groundingdino.tokenizer import VOCAB_FILE

    directory.mkdir(parents=True, exist_ok=True)
    vocab = (Path(local_groundingdino.__file__).parent / VOCAB_FILE).read_text(encoding="utf-8")
    (directory / "vocab.txt").write_text(vocab, encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab.splitlines()))  # bert-base: 768 wide, 12 layers
    BertModel(config).save_pretrained(str(directory))
    return directory


def _dino_pixels(image: Image.Image) -> torch.Tensor:
    """GroundingDINO's transform: shorter side 800 (longer at most 1333, sizes truncated as its
    RandomResize does), bilinear, ToTensor, ImageNet normalisation."""
    from local_groundingdino.detector import detection_size

    array = np.asarray(image.resize(detection_size(*image.size), Image.BILINEAR), dtype=np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())


def reference_boxes(dino, image: Image.Image, caption: str, box_threshold: float) -> torch.Tensor:
    """The reference's detection: max token score over the threshold, cxcywh -> pixel xyxy."""
    with torch.no_grad():
        out = dino(_dino_pixels(image.convert("RGB"))[None], captions=[caption.lower().strip() + "."])
    logits = out["pred_logits"].sigmoid()[0]
    keep = logits.max(dim=1)[0] > box_threshold
    boxes = out["pred_boxes"][0][keep] * torch.tensor([image.width, image.height, image.width, image.height])
    return torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], dim=1)


def _write_reference_outputs(rgba: np.ndarray, masks: np.ndarray, boxes: np.ndarray, out: Path, stem: str) -> None:
    for index in range(masks.shape[0]):
        merged = np.any(masks[index], axis=0)
        matte = rgba.copy()
        matte[~merged] = 0
        Image.fromarray(matte).save(out / f"{stem}_{index}_output.png")
        Image.fromarray(merged).save(out / f"{stem}_{index}_mask.png")
        blend = rgba.copy()
        blend[merged, :3] = (blend[merged, :3] * 0.5 + np.array([30, 144, 255]) * 0.5).astype(np.uint8)
        picture = Image.fromarray(blend)
        draw = ImageDraw.Draw(picture)
        for box in boxes:
            draw.rectangle([float(v) for v in box], outline=(255, 0, 0), width=2)
        picture.save(out / f"{stem}_{index}_blend.png")


def reference_loop(sam_predictor, dino, sources: Sequence[Path], out: Path, caption: str, box_threshold: float) -> List[int]:
    """The reference's batch loop; returns the number of boxes per image."""
    out.mkdir(parents=True, exist_ok=True)
    counts = []
    for path in sources:
        image = Image.open(path).convert("RGBA")
        boxes = reference_boxes(dino, image, caption, box_threshold)
        gc.collect()
        counts.append(int(boxes.shape[0]))
        if boxes.shape[0] == 0:
            continue
        rgba = np.array(image)
        sam_predictor.set_image(rgba[..., :3])
        transformed = sam_predictor.transform.apply_boxes_torch(boxes, rgba.shape[:2])
        with torch.no_grad():
            masks, _, _ = sam_predictor.predict_torch(None, None, boxes=transformed, multimask_output=True)
        _write_reference_outputs(rgba, masks.permute(1, 0, 2, 3).numpy(), boxes.numpy(), out, path.stem)
    return counts


def choose_box_threshold(dino, image_path: Path, caption: str, wanted: int = BOXES_PER_IMAGE) -> float:
    """A threshold halfway between the wanted-th and the next query score of one image: random
    weights score every query alike, and a real user gets a handful of boxes, not hundreds."""
    with torch.no_grad():
        out = dino(_dino_pixels(Image.open(image_path).convert("RGB"))[None], captions=[caption + "."])
    scores = torch.sort(out["pred_logits"].sigmoid()[0].max(dim=1)[0], descending=True)[0]
    return float((scores[wanted - 1] + scores[wanted]) / 2)


def batch_text_throughput(images: Sequence[np.ndarray], sam_state: Dict[str, torch.Tensor], caption: str = CAPTION) -> Dict[str, float]:
    """Images per second for both sides over the same files; see the module docstring."""
    from segment_anything import SamPredictor

    from sd_webui_sam.batch import STATE_FILE, BatchOptions, run_batch
    from sd_webui_sam.engine import Engine
    from sd_webui_sam.settings import EngineSettings
    from tools.fixtures.gdino_checkpoints import build_reference_gdino, save_checkpoint
    from tools.fixtures.sam_checkpoints import VIT_B, build_reference_sam, save_state_dict

    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        dino = build_reference_gdino("swin_t", write_bert_base_dir(root / "bert-base-uncased"))
        save_checkpoint(dino, root / "grounding-dino" / "groundingdino_swint_ogc.pth")
        save_state_dict(sam_state, root / "sam" / "sam_vit_b_random.pth")
        reference_sam = build_reference_sam(VIT_B)
        reference_sam.load_state_dict(sam_state)
        source = root / "in"
        source.mkdir()
        for index, image in enumerate(images):
            Image.fromarray(image).save(source / f"img{index:03d}.png")
        sources = sorted(source.glob("*.png"))
        threshold = choose_box_threshold(dino, sources[0], caption)

        engine = Engine(EngineSettings(user_model_dir=root / "sam", gdino_user_model_dir=root / "grounding-dino", device="cpu"))
        model = engine.list_models()[0]
        options = dict(model=model, text=caption, box_threshold=threshold, outputs=("mask", "cutout", "blend"))
        # warm-up, untimed: both sides load their models and run once, as a cached WebUI would
        run_batch(engine, BatchOptions(inputs=[sources[0]], output_dir=root / "warm", **options))
        predictor = SamPredictor(reference_sam)
        reference_loop(predictor, dino, sources[:1], root / "warm_reference", caption, threshold)

        started = time.perf_counter()
        counts = reference_loop(predictor, dino, sources, root / "reference", caption, threshold)
        reference_s = time.perf_counter() - started
        started = time.perf_counter()
        report = run_batch(engine, BatchOptions(inputs=[source], output_dir=root / "ours", **options))
        ours_s = time.perf_counter() - started
        engine.unload()
        state = (root / "ours" / STATE_FILE).read_text(encoding="utf-8").splitlines()
        ours_boxes = [int(json.loads(line).get("objects", 0)) for line in state]
    count = len(images)
    return {
        "images": count,
        "reference_img_per_s": count / reference_s,
        "ours_img_per_s": count / ours_s,
        "speedup": reference_s / ours_s,
        "reference_boxes": float(np.mean(counts)),
        "ours_boxes": float(np.mean(ours_boxes)) if ours_boxes else 0.0,
        "ours_done": report.done,
        "ours_no_objects": report.no_objects,
        "ours_failed": len(report.failed),
        "box_threshold": threshold,
    }
