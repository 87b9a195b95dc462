"""Device and dtype, decided in one place.

Everything that puts a model or a tensor on a device asks :func:`resolve_placement`; nothing
else in the code base calls ``torch.cuda.is_available()`` or picks a dtype on its own.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

__all__ = ["DEVICE_CHOICES", "Placement", "is_out_of_memory", "release_memory", "resolve_placement"]

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


@dataclass(frozen=True)
class Placement:
    """Where models run, and whether they go back to the CPU between uses."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    offload_to_cpu: bool = False

    @property
    def storage_device(self) -> torch.device:
        """Where a model rests between uses."""
        return torch.device("cpu") if self.offload_to_cpu else self.device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_placement(preference: str = "auto", *, offload_to_cpu: bool = False, half: bool = False) -> Placement:
    """Turn a user preference ("auto", "cuda", "cuda:1", "mps", "cpu") into a placement.

    fp16 is only used on CUDA when asked for: SAM's decoder is numerically sensitive and MPS
    has uneven fp16 support, so the default everywhere is fp32.
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
    dtype = torch.float16 if (half and device.type == "cuda") else torch.float32
    return Placement(device=device, dtype=dtype, offload_to_cpu=offload_to_cpu and device.type != "cpu")


def release_memory() -> None:
    """Give freed tensors back to the driver, so an unload is visible in nvidia-smi."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
    elif _mps_available() and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
