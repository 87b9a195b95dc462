"""Building a model around checkpoint tensors without a second copy of the weights.

Models are built on the meta device (no memory, no random initialisation), then the
checkpoint's tensors -- memory-mapped from the file where the format allows -- become the
parameters themselves (``load_state_dict(assign=True)``). The only tensors a checkpoint does not
provide are the small non-persistent buffers a module computes from its configuration; modules
create those with :func:`computed_buffer`, which builds them on the CPU even during a meta build.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping, Tuple

import torch
from torch import Tensor, nn

META = torch.device("meta")


def computed_buffer(module: nn.Module, name: str, compute: Callable[[], Tensor]) -> None:
    """Register a non-persistent buffer computed from the configuration.

    A checkpoint never holds it, so loading cannot fill it in: it must be a real tensor even
    while the rest of the model is built on the meta device.
    """
    with torch.device("cpu"):
        tensor = compute()
    module.register_buffer(name, tensor, persistent=False)


def build_empty(factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` with its parameters and persistent buffers on the meta device.

    The device context is thread-local, so models built concurrently elsewhere are unaffected.
    """
    with torch.device(META):
        return factory()


def assign_weights(model: nn.Module, weights: Mapping[str, Tensor]) -> nn.Module:
    """Make ``weights`` the model's parameters and buffers (no copy), strictly.

    Floating tensors are brought to float32 (a no-op for float32 files), so a freshly loaded
    model is always fp32 on the CPU whatever the file's dtype; placement happens afterwards,
    in one move. Raises RuntimeError if a tensor of the model was left on the meta device.
    """
    fp32 = {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    model.load_state_dict(fp32, strict=True, assign=True)
    left = [name for name, tensor in named_tensors(model) if tensor.is_meta]
    if left:
        raise RuntimeError(f"{type(model).__name__} still has tensors without data after loading: {', '.join(left[:5])}")
    return model


def named_tensors(module: nn.Module) -> Iterator[Tuple[str, Tensor]]:
    yield from module.named_parameters()
    yield from module.named_buffers()


def tensor_bytes(module: nn.Module) -> int:
    """Bytes held by the module's parameters and buffers (tensors sharing storage count once)."""
    seen = set()
    total = 0
    for _, tensor in named_tensors(module):
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), tensor.device)
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes() if storage.data_ptr() else tensor.numel() * tensor.element_size()
    return int(total)
