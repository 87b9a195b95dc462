"""Device and dtype, decided in one place.

Everything that puts a model or a tensor on a device asks :func:`resolve_placement`; nothing
else in the code base calls ``torch.cuda.is_available()`` or picks a dtype on its own.

Precision applies to the image encoders only (SAM's ViT, TinyViT, Hiera, GroundingDINO's Swin
and BERT): they run once per image and hold nearly all of the compute. Prompt encoders, mask
decoders and everything after them (upsampling, thresholds) always run in float32
(:data:`DECODER_DTYPE`): the decoder is small, and its logits are thresholded at 0, where a
reduced-precision rounding flips pixels along every edge.
"""
from __future__ import annotations

import functools
import gc
import importlib.util
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

__all__ = ["ATTENTION_BANDED", "ATTENTION_FUSED", "DECODER_DTYPE", "DEVICE_CHOICES", "PRECISION_CHOICES", "Placement",
           "attention_kernel", "cpu_bf16_slowdown", "default_encode_batch", "default_points_per_batch", "encoder_compile_unavailable",
           "is_out_of_memory", "release_memory", "resolve_placement", "resolve_precision"]

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
#: The image encoders' precision: "auto" is bf16 on CUDA GPUs that support it, fp16 on older
#: CUDA GPUs, fp32 on the CPU and on Apple GPUs (MPS).
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
#: Prompt encoders and mask decoders run in this dtype whatever the precision.
DECODER_DTYPE = torch.float32

_PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Images per image-encoder pass on an accelerator; a card with less memory gets fewer (one per
#: ENCODE_BYTES_PER_IMAGE of it), and an out-of-memory error halves it again (Predictor.encode_many).
MAX_ENCODE_BATCH = 8
ENCODE_BYTES_PER_IMAGE = 2 * 1024**3
#: Single-point prompts per decoder call in segment everything. On a CPU a small batch keeps each
#: call's per-prompt copies of the image tokens (4 MiB a prompt) in cache: 4 to 8 were fastest per
#: prompt, 32 and 64 20-40% slower, same masks. Accelerators want large batches: at least 128,
#: and on CUDA one prompt per DECODE_BYTES_PER_POINT of memory (an estimate of one prompt's peak
#: in the decoder, fp32: its copies of the image tokens and the upscaled mask features), up to
#: MAX_POINTS_PER_BATCH (the default 32 x 32 grid in one call). Out of memory halves a call.
CPU_POINTS_PER_BATCH = 8
ACCELERATOR_POINTS_PER_BATCH = 128
DECODE_BYTES_PER_POINT = 64 * 1024**2
MAX_POINTS_PER_BATCH = 1024
#: A CPU whose bf16 matrix products take this many times its fp32 ones has no bf16 instructions
#: (AVX2 only): torch then emulates bf16, 50-100x slower than fp32 (84x measured on an AVX2 EPYC);
#: with them (AVX-512 BF16, AMX) bf16 is about as fast as fp32 or faster.
SLOW_BF16_FACTOR = 8.0


@dataclass(frozen=True)
class Placement:
    """Where models run, in which precision, and whether they go back to the CPU between uses."""

    device: torch.device
    #: The image encoders' compute dtype (and so the dtype of their embeddings); the decoders
    #: always run in :data:`DECODER_DTYPE`.
    dtype: torch.dtype = torch.float32
    offload_to_cpu: bool = False
    #: Why ``dtype`` is not the precision that was asked for ("" when it is), for the log and the panel.
    precision_note: str = ""

    @property
    def decoder_dtype(self) -> torch.dtype:
        return DECODER_DTYPE

    @property
    def storage_device(self) -> torch.device:
        """Where a model rests between uses."""
        return torch.device("cpu") if self.offload_to_cpu else self.device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_placement(preference: str = "auto", *, offload_to_cpu: bool = False, precision: str = "auto") -> Placement:
    """Turn a user preference ("auto", "cuda", "cuda:1", "mps", "cpu") and a precision (one of
    :data:`PRECISION_CHOICES`) into a placement. A device the machine lacks resolves to the CPU;
    a precision the device cannot run well resolves to another, with ``precision_note`` saying why.
    """
    preference = (preference or "auto").strip().lower()
    if preference == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif _mps_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    elif preference.startswith("cuda"):
        device = torch.device(preference) if torch.cuda.is_available() else torch.device("cpu")
    elif preference == "mps":
        device = torch.device("mps") if _mps_available() else torch.device("cpu")
    elif preference == "cpu":
        device = torch.device("cpu")
    else:
        raise ValueError(f"Unknown device {preference!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    dtype, note = resolve_precision(precision, device)
    return Placement(device=device, dtype=dtype, offload_to_cpu=offload_to_cpu and device.type != "cpu",
                     precision_note=note)


def resolve_precision(precision: str, device: torch.device) -> Tuple[torch.dtype, str]:
    """(the image encoders' dtype on ``device``, why it differs from what was asked or "")."""
    choice = (precision or "auto").strip().lower()
    if choice not in PRECISION_CHOICES:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}.")
    if choice == "fp32":
        return torch.float32, ""
    if device.type == "cuda":
        bf16_supported = torch.cuda.is_bf16_supported()
        if choice == "auto":
            return (torch.bfloat16 if bf16_supported else torch.float16), ""
        if choice == "bf16" and not bf16_supported:
            return torch.float16, "This GPU does not support bf16; SAM's image encoder runs in fp16 instead."
        return _PRECISION_DTYPES[choice], ""
    if device.type == "mps":
        # fp16 is native on Apple GPUs; bf16 needs macOS 14 and a recent torch, so it is not offered.
        if choice == "fp16":
            return torch.float16, ""
        if choice == "bf16":
            return torch.float32, "bf16 is not supported on Apple GPUs (MPS) here; SAM's image encoder runs in fp32."
        return torch.float32, ""
    # The CPU (and any other device): bf16 has fast kernels on CPUs with bf16 instructions, fp16
    # matrix products do not (slow, and missing for some operations on torch 2.1).
    if choice == "bf16":
        slowdown = cpu_bf16_slowdown()
        if slowdown >= SLOW_BF16_FACTOR:
            # Kept as asked (it halves the embeddings' memory), but the user should know the price.
            return torch.bfloat16, (f"This CPU has no bf16 instructions: a bf16 matrix product took {slowdown:.0f}x "
                                    "an fp32 one here, so SAM's image encoder runs in bf16 as asked but much "
                                    "slower; choose fp32 or auto for speed.")
        return torch.bfloat16, ""
    if choice == "fp16":
        return torch.float32, "fp16 is slow or unsupported on the CPU; SAM's image encoder runs in fp32 (bf16 works there)."
    return torch.float32, ""


@functools.lru_cache(maxsize=None)  # a fact of the machine: measured once, on first use
def cpu_bf16_slowdown() -> float:
    """How many times longer a bf16 matrix product takes than an fp32 one on this CPU (the best
    of three 256x256 products each, about 0.1 s at most): about 1 where the CPU has bf16
    instructions, 50-100 where torch emulates them."""
    def best_time(dtype: torch.dtype) -> float:
        left = torch.ones(256, 256, dtype=dtype)
        times = []
        for _ in range(3):
            began = time.perf_counter()
            left @ left
            times.append(time.perf_counter() - began)
        return min(times)

    return best_time(torch.bfloat16) / max(best_time(torch.float32), 1e-9)


def release_memory() -> None:
    """Give freed tensors back to the driver, so an unload is visible in nvidia-smi."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
    elif _mps_available() and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def default_encode_batch(device: torch.device) -> int:
    """How many images one image-encoder pass takes, to start with, on ``device``.

    1 on the CPU: a batch computes nothing faster there and only holds more activations. On an
    accelerator, up to MAX_ENCODE_BATCH, one image per ENCODE_BYTES_PER_IMAGE of CUDA memory
    (ViT-H's global attention alone is about 1 GiB an image in fp32).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return 1
    if device.type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(device).total_memory
        return max(1, min(MAX_ENCODE_BATCH, int(total // ENCODE_BYTES_PER_IMAGE)))
    return MAX_ENCODE_BATCH


def default_points_per_batch(device: torch.device, asked: int) -> int:
    """Single-point prompts per decoder call in segment everything on ``device`` (the masks do not
    depend on it): CPU_POINTS_PER_BATCH on the CPU; on an accelerator the larger of ``asked`` (the
    reference's points_per_batch) and what the device's memory allows (see the constants)."""
    device = torch.device(device)
    if device.type == "cpu":
        return CPU_POINTS_PER_BATCH
    chosen = ACCELERATOR_POINTS_PER_BATCH
    if device.type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(device).total_memory
        chosen = max(chosen, min(MAX_POINTS_PER_BATCH, int(total // DECODE_BYTES_PER_POINT)))
    return max(int(asked), chosen)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


#: How the SAM ViT encoder computes attention (sd_webui_sam/modeling/image_encoder.py).
ATTENTION_FUSED = "fused"    # torch's scaled_dot_product_attention, relative positions as an additive bias
ATTENTION_BANDED = "banded"  # logits in bands of query rows that stay in cache


def attention_kernel(device: torch.device) -> str:
    """The ViT attention for tensors on ``device``.

    Accelerators get the fused kernel (torch's scaled_dot_product_attention; its memory-efficient
    kernel never writes the logit map to memory). The CPU keeps the banded loop: on torch 2.1 SDPA
    with a float mask takes its math path there, which holds a global block's whole logit map and
    was about 1.5x slower on one ViT-B global block (2 threads); on 2.3 its CPU flash kernel takes
    the mask and came out about even with the banded loop (one block, on a loaded machine).

    Only the SAM ViT needs the choice: MobileSAM's TinyViT and GroundingDINO's Swin pass biases
    of windows of at most 196 tokens and BERT a short text's mask (small logit maps), and SAM 2's
    Hiera passes no mask (a flash kernel on the CPU too), so those call SDPA on every device.
    """
    return ATTENTION_BANDED if device.type == "cpu" else ATTENTION_FUSED


def encoder_compile_unavailable(device: torch.device) -> Optional[str]:
    """Why ``torch.compile`` of the encoder is not used on ``device``; None when it is.

    Inductor needs Triton for GPU kernels; on the CPU a compile takes minutes for little gain,
    and MPS has no inductor backend on torch 2.1 / 2.3.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return f"compiling the encoder needs a CUDA device (running on {device.type})"
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if importlib.util.find_spec("triton") is None:
        return "compiling the encoder needs Triton, which is not installed"
    return None
