"""Optional ``torch.compile`` of a loaded model's image encoder (``EngineSettings.compile_encoder``).

The model store installs an :class:`EncoderRunner` as the model's ``encode_image`` when the
setting is on; the predictor calls ``model.encode_image`` as always. The runner compiles only
where :func:`sd_webui_sam.devices.encoder_compile_unavailable` allows it (a CUDA device and
Triton), decided per call from the input's device, so a switch to the CPU or an offloaded model
simply runs eager. A compile that fails falls back to eager once, is logged in one line, and is
not tried again for that model. ``status`` says which of these happened.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from sd_webui_sam import devices

__all__ = ["EncoderRunner", "install", "status_of"]

logger = logging.getLogger(__name__)

Encode = Callable[[Tensor], Mapping[str, Tensor]]
#: ``torch.compile``'s signature, as far as it is used here (tests hand in a fake one).
CompileFunction = Callable[..., Encode]
ShapeKey = Tuple[Tuple[int, ...], torch.dtype, str]


def _torch_compile(function: Encode, *, dynamic: bool) -> Encode:
    return torch.compile(function, dynamic=dynamic)


class EncoderRunner:
    """``encode_image`` run compiled where it can be, eager elsewhere."""

    def __init__(self, eager: Encode, label: str, compile_function: Optional[CompileFunction] = None) -> None:
        self._eager = eager
        self._label = label
        self._compile = compile_function or _torch_compile
        # One compiled callable per input shape, dtype and device, each with dynamic=False:
        # specialised to its sizes (no symbolic shapes in the kernels). Dynamo keeps the graphs
        # on the traced code objects behind shape guards, so these share one cache: a shape
        # seen before never compiles again, and past torch._dynamo.config.cache_size_limit
        # (8 shapes) dynamo itself runs further shapes eager. The encoder sees few shapes (one
        # input side per family, the batch sizes used). The dict is what tells a shape's first
        # call, which compiles and may fail, from the warm ones.
        self._compiled: Dict[ShapeKey, Encode] = {}
        self._failure: Optional[str] = None
        self.status = "not used yet"

    def __call__(self, pixels: Tensor) -> Mapping[str, Tensor]:
        reason = self._failure or devices.encoder_compile_unavailable(pixels.device)
        if reason is not None:
            self._set_status(f"eager: {reason}")
            return self._eager(pixels)
        key: ShapeKey = (tuple(pixels.shape), pixels.dtype, str(pixels.device))
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = self._compile(self._eager, dynamic=False)
        try:
            features = compiled(pixels)
        except Exception as error:
            if devices.is_out_of_memory(error):
                raise  # not a compile problem: the caller frees memory and says so
            message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            self._failure = f"torch.compile failed ({type(error).__name__}: {message})"
            self._compiled.clear()
            logger.warning("%s: %s; the encoder runs eager from now on", self._label, self._failure)
            self.status = f"eager: {self._failure}"
            return self._eager(pixels)
        self._set_status(f"compiled ({len(self._compiled)} input shape{'s' if len(self._compiled) != 1 else ''})")
        return features

    def compiled_shapes(self) -> List[ShapeKey]:
        return list(self._compiled)

    def _set_status(self, status: str) -> None:
        if status != self.status:
            if status.startswith("eager"):
                logger.info("%s: encoder %s", self._label, status)
            self.status = status


def install(model: nn.Module, label: str, compile_function: Optional[CompileFunction] = None) -> EncoderRunner:
    """Route ``model.encode_image`` through a runner (an instance attribute over the method:
    the weights and the state dict are untouched, and the predictor's call stays the same)."""
    current = model.encode_image
    if isinstance(current, EncoderRunner):
        return current
    runner = EncoderRunner(current, label, compile_function)
    model.encode_image = runner
    return runner


def status_of(model: Optional[nn.Module]) -> Optional[str]:
    """The runner's status for a model it was installed on; None otherwise."""
    runner = getattr(model, "encode_image", None)
    return runner.status if isinstance(runner, EncoderRunner) else None
