"""AutoSAM features end to end, for the panel, the HTTP API and the standalone app.

Each function takes the Engine and a model name, runs segment-everything once, and builds one
feature's outputs from the masks. Images are (H,W,3) uint8 RGB; outputs are at the image's own
resolution. ``control`` (optional) reports progress and is the Stop the generation checks
between point batches; the folder functions also check it between images.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from sd_webui_sam import rle
from sd_webui_sam.autosam import editanything, layers, semantic
from sd_webui_sam.autosam.editanything import blend
from sd_webui_sam.autosam.generator import AutoSamConfig, MaskRecord, generate_masks_with_engine
from sd_webui_sam.autosam.progress import GenerationInterrupted, JobControl
from sd_webui_sam.autosam.segmenters import SemanticSegmenter
from sd_webui_sam.engine import Engine
from sd_webui_sam.errors import SamUserError
from sd_webui_sam.images import load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def segment_everything(engine: Engine, model_name: str, image: np.ndarray, config: Optional[AutoSamConfig] = None,
                       *, control: Optional[JobControl] = None, **overrides) -> list[MaskRecord]:
    config = config or AutoSamConfig()
    if overrides:
        config = replace(config, **overrides)
    return generate_masks_with_engine(engine, model_name, image, config, control=control)


def random_segmentation(engine: Engine, model_name: str, image: np.ndarray, config: Optional[AutoSamConfig] = None,
                        seed: int = 0, *, control: Optional[JobControl] = None) -> editanything.RandomSegmentation:
    masks = segment_everything(engine, model_name, image, config, control=control)
    return editanything.random_segmentation(image, masks, seed=seed)


def semantic_segmentation(engine: Engine, model_name: str, image: np.ndarray, segmenter: SemanticSegmenter, resolution: int,
                          config: Optional[AutoSamConfig] = None, *,
                          control: Optional[JobControl] = None) -> semantic.SemanticResult:
    """Before/after SAM refinement of the segmenter's class map (all at the image's resolution)."""
    class_map = segmenter.segment(image, int(resolution))
    masks = segment_everything(engine, model_name, image, config, control=control)
    return semantic.sam_refined_segmentation(image, class_map, masks, semantic.dataset(segmenter.dataset))


@dataclass(frozen=True)
class CategoryResult:
    mask: np.ndarray                       # (H,W) bool at the image's resolution
    class_ids: list[int]
    semantic: semantic.SemanticResult


def category_mask(engine: Engine, model_name: str, image: np.ndarray, segmenter: SemanticSegmenter, resolution: int,
                  categories, config: Optional[AutoSamConfig] = None, *,
                  control: Optional[JobControl] = None) -> CategoryResult:
    """One mask of the chosen classes (names or ids) from the SAM-refined class map."""
    data = semantic.dataset(segmenter.dataset)
    ids = semantic.parse_categories(categories, data)   # before any model runs: a typo fails fast
    result = semantic_segmentation(engine, model_name, image, segmenter, resolution, config, control=control)
    return CategoryResult(mask=np.isin(result.after, ids), class_ids=ids, semantic=result)


# ---------------------------------------------------------------------------------------------
# folders


def image_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SamUserError(f"Input folder {folder} does not exist.")
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class BatchReport:
    done: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stopped: bool = False

    def status(self) -> str:
        lines = [f"{len(self.done)} image(s) done." + (" Stopped before the rest." if self.stopped else "")] + self.errors
        return "\n".join(lines)


def _load(path: Path, engine: Engine) -> np.ndarray:
    return load_image(path, engine.settings.max_image_pixels)


def layout(engine: Engine, model_name: str, image: np.ndarray, output_dir: Path, stem: str = "layout",
           config: Optional[AutoSamConfig] = None, write_psd: bool = True, alpha: str = "hard",
           alpha_band: float = 0, *, control: Optional[JobControl] = None) -> layers.LayoutResult:
    masks = segment_everything(engine, model_name, image, config, control=control)
    return layers.export_layout(image, masks, Path(output_dir), stem, write_psd_file=write_psd, alpha=alpha,
                                alpha_band=alpha_band)


def layout_folder(engine: Engine, model_name: str, input_dir: Path, output_dir: Path, config: Optional[AutoSamConfig] = None,
                  write_psd: bool = True, alpha: str = "hard", alpha_band: float = 0, *,
                  control: Optional[JobControl] = None) -> BatchReport:
    """A layout (PNG layers + PSD) per image, each in output_dir/<image name>/; one failing
    image is reported and the rest go on. A stop ends the folder after the layouts already written."""
    report = BatchReport()
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    for path in image_files(input_dir):
        try:
            result = layout(engine, model_name, _load(path, engine), Path(output_dir), path.stem, config, write_psd,
                            alpha, alpha_band, control=control)
            report.done.append(result.directory)
        except GenerationInterrupted:
            report.stopped = True
            break
        except SamUserError as error:
            report.errors.append(f"{path.name}: {error}")
    return report


def category_mask_folder(engine: Engine, model_name: str, input_dir: Path, output_dir: Path, segmenter: SemanticSegmenter,
                         resolution: int, categories, config: Optional[AutoSamConfig] = None,
                         save_mask: bool = True, save_masked: bool = True, save_blend: bool = True,
                         invert: bool = False, *, control: Optional[JobControl] = None) -> BatchReport:
    """Masks by category for a folder, at each image's resolution. The mask keeps the image's
    file name (stem + .png) inside output_dir/masks, the layout A1111's inpaint batch expects;
    existing files are never overwritten."""
    semantic.parse_categories(categories, semantic.dataset(segmenter.dataset))
    output_dir = Path(output_dir)
    report = BatchReport()
    for path in image_files(input_dir):
        try:
            image = _load(path, engine)
            result = category_mask(engine, model_name, image, segmenter, resolution, categories, config, control=control)
            mask = ~result.mask if invert else result.mask
            outputs = []
            if save_mask:
                outputs.append((output_dir / "masks" / f"{path.stem}.png", Image.fromarray(mask.astype(np.uint8) * 255)))
            if save_masked:
                rgba = np.dstack([image, mask.astype(np.uint8) * 255])
                outputs.append((output_dir / "masked" / f"{path.stem}.png", Image.fromarray(rgba, "RGBA")))
            if save_blend:
                tinted = np.where(mask[..., None], blend(image, np.full_like(image, (255, 0, 0))), image)
                outputs.append((output_dir / "blend" / f"{path.stem}.png", Image.fromarray(tinted)))
            for target, picture in outputs:
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    raise SamUserError(f"{target} already exists; choose an empty output folder.")
                picture.save(target)
            report.done.append(path)
        except GenerationInterrupted:
            report.stopped = True
            break
        except SamUserError as error:
            report.errors.append(f"{path.name}: {error}")
    return report


def records_as_json(records: Sequence[MaskRecord]) -> list[dict]:
    """The reference generator's annotation list, JSON-ready (binary masks become COCO RLE)."""
    out = []
    for record in records:
        item = record.to_dict()
        if isinstance(item["segmentation"], np.ndarray):
            item["segmentation"] = rle.encode(item["segmentation"])
        out.append(item)
    return out
