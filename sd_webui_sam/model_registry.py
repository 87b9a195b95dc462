"""Which model a checkpoint holds, and how to build it.

A checkpoint is identified from its tensor names and shapes only (never from its file name),
so a renamed file or a ``.safetensors`` copy is recognised the same way. Each family module
listed in :data:`FAMILY_MODULES` exposes ``FAMILIES``; every family's ``identify`` is strict,
so the order of the families never decides the answer.
"""
from __future__ import annotations

import importlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Optional, Protocol, Sequence, Tuple

import torch

from sd_webui_sam.checkpoints import check_shapes, unwrap_state_dict
from sd_webui_sam.errors import UnrecognisedCheckpointError
from sd_webui_sam.weights import assign_weights, build_empty

if TYPE_CHECKING:
    from sd_webui_sam.modeling.segmenter import PromptableSegmenter

logger = logging.getLogger(__name__)

#: Static list of modules that provide model families. A module that cannot be imported
#: (e.g. an optional family whose package is absent) is skipped; plain SAM always works.
FAMILY_MODULES = ("sam_hq.families", "sam2_image.families", "sd_webui_sam.families")

#: Buffers that models compute themselves; some exported checkpoints carry them anyway.
NON_PERSISTENT_BUFFERS = ("pixel_mean", "pixel_std")

Shapes = Mapping[str, Tuple[int, ...]]


@dataclass(frozen=True)
class ModelSpec:
    family: str  # "sam" | "sam_hq" | "mobile_sam" | ...
    variant: str  # "vit_b" | "vit_l" | "vit_h" | "vit_tiny" | "tiny_vit" | "custom"
    config: Mapping = field(hash=False)  # hyper-parameters derived from tensor shapes
    label: str = ""  # "SAM ViT-B", "HQ-SAM ViT-L", "MobileSAM"


class ModelFamily(Protocol):
    name: str

    def identify(self, shapes: Shapes) -> Optional[ModelSpec]:
        """The spec when ``shapes`` are exactly this family's layout, else None."""

    def build(self, spec: ModelSpec) -> "PromptableSegmenter":
        """A randomly initialised fp32 CPU model for ``spec``."""


def all_families() -> Tuple[ModelFamily, ...]:
    """Every family of every importable module in :data:`FAMILY_MODULES`."""
    families = []
    for module_name in FAMILY_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            missing = getattr(error, "name", None) or ""
            if module_name == missing or module_name.startswith(missing + "."):
                logger.debug("Model family module %s is not installed", module_name)
            else:
                logger.warning("Model family module %s failed to import: %s", module_name, error)
            continue
        except Exception as error:  # a broken optional family must not take plain SAM down with it
            logger.warning("Model family module %s failed to import: %s", module_name, error)
            continue
        families.extend(getattr(module, "FAMILIES", ()))
    return tuple(families)


def family_named(name: str) -> ModelFamily:
    for family in all_families():
        if family.name == name:
            return family
    raise UnrecognisedCheckpointError(
        f"Support for {name} models is not available in this installation (its module could not be imported)."
    )


def identify(shapes: Shapes) -> ModelSpec:
    """The spec of the one family whose layout ``shapes`` match.

    Raises UnrecognisedCheckpointError naming what the file seems to be instead.
    """
    for family in all_families():
        try:
            spec = family.identify(shapes)
        except Exception as error:  # one family's bug must not hide a match by another
            logger.warning("Model family %s failed while identifying a checkpoint: %s", family.name, error)
            continue
        if spec is not None:
            return spec
    raise UnrecognisedCheckpointError(describe_unknown_layout(shapes))


def describe_unknown_layout(shapes: Shapes) -> str:
    """A message for a checkpoint that no family accepts: what it looks like, what to do."""
    names = list(shapes)
    guess = _known_foreign_layout(names)
    if guess:
        return guess
    prefixes = Counter(name.split(".", 1)[0] for name in names)
    shown = ", ".join(f"{prefix} ({count})" for prefix, count in prefixes.most_common(5))
    more = f" and {len(prefixes) - 5} more" if len(prefixes) > 5 else ""
    return (
        "This file is not a supported Segment Anything checkpoint (SAM ViT-B/L/H, HQ-SAM, MobileSAM, SAM 2 / 2.1). "
        f"It holds {len(names)} tensors; top-level key prefixes: {shown or 'none'}{more}. "
        "Put only SAM-family checkpoints in the SAM models folder."
    )


def _known_foreign_layout(names: Sequence[str]) -> Optional[str]:
    has = lambda prefix: any(name.startswith(prefix) for name in names)  # noqa: E731
    if has("bert.") and has("transformer.") and (has("backbone.") or has("feat_map.")):
        return (
            f"This is a GroundingDINO checkpoint ({len(names)} tensors), not a SAM model; "
            "put it in models/grounding-dino."
        )
    available = {family.name for family in all_families()}
    for looks_like, family_name, label in (
        (has("mask_decoder.hf_token") or has("mask_decoder.compress_vit_feat"), "sam_hq", "an HQ-SAM"),
        (has("image_encoder.layers.") and has("mask_decoder."), "mobile_sam", "a MobileSAM (TinyViT)"),
    ):
        if not looks_like:
            continue
        if family_name in available:
            return (f"This looks like {label} checkpoint, but its tensors ({len(names)}) do not form a complete "
                    "model: the file is incomplete or modified. Download it again.")
        return f"This is {label} checkpoint, but support for it (the sam_hq package) is not available in this installation."
    if has("image_encoder.trunk.") or has("memory_attention.") or has("sam_mask_decoder."):
        if "sam2" in available:
            return (f"This looks like a SAM 2 checkpoint, but its tensors ({len(names)}) do not form a complete "
                    "model: the file is incomplete or modified. Download it again.")
        return "This is a SAM 2 checkpoint, but support for it (the sam2_image package) is not available in this installation."
    return None


def build_model(spec: ModelSpec, state_dict: Mapping[str, torch.Tensor], *, source: str = "The checkpoint") -> "PromptableSegmenter":
    """The model for ``spec`` whose parameters are ``state_dict``'s tensors (no copy when they are fp32), strictly.

    Tolerates a "model"/"state_dict" wrapper and a "module." prefix; drops the non-persistent
    pixel statistics that some exports include. Tensors that do not fit the architecture raise
    CorruptCheckpointError naming them.
    """
    weights = dict(unwrap_state_dict(state_dict))
    family = family_named(spec.family)
    # A family whose files also hold weights its model does not use (SAM 2's video tracking) drops them.
    select = getattr(family, "model_weights", None)
    if select is not None:
        weights = select(weights)
    # Built without memory or random init: the checkpoint's tensors become the weights.
    model = build_empty(lambda: family.build(spec))
    expected = model.state_dict()
    for name in list(weights):
        if name.rsplit(".", 1)[-1] in NON_PERSISTENT_BUFFERS and name not in expected:
            del weights[name]
    check_shapes(
        source,
        {name: tuple(tensor.shape) for name, tensor in expected.items()},
        {name: tuple(tensor.shape) for name, tensor in weights.items()},
        spec.label or spec.family,
    )
    return assign_weights(model, weights).eval()
