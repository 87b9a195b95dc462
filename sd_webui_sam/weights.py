"""Building a model around checkpoint tensors without a second copy of the weights.

Models are built on the meta device (no memory, no random initialisation), then the
checkpoint's tensors -- memory-mapped from the file where the format allows -- become the
parameters themselves (what ``load_state_dict(assign=True)`` does). The only tensors a checkpoint does not
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
    _assign_strictly(model, fp32)
    left = [name for name, tensor in named_tensors(model) if tensor.is_meta]
    if left:
        raise RuntimeError(f"{type(model).__name__} still has tensors without data after loading: {', '.join(left[:5])}")
    return model


def _assign_strictly(model: nn.Module, weights: Mapping[str, Tensor]) -> None:
    """What ``load_state_dict(weights, strict=True, assign=True)`` does, without calling it: a host
    may swap ``nn.Module.load_state_dict`` while it loads its own model in another thread (A1111's
    ``LoadStateDictOnMeta``, whose stand-in takes no ``assign``)."""
    slots = {}
    for name, _ in model.named_parameters(remove_duplicate=False):
        slots[name] = "_parameters"
    for owner_name, owner in model.named_modules(remove_duplicate=False):
        for leaf in owner._buffers:
            if leaf not in owner._non_persistent_buffers_set and owner._buffers[leaf] is not None:
                slots[f"{owner_name}.{leaf}" if owner_name else leaf] = "_buffers"
    missing = sorted(set(slots) - set(weights))
    unexpected = sorted(set(weights) - set(slots))
    if missing or unexpected:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(model).__name__}: missing keys {missing[:5]}, "
                           f"unexpected keys {unexpected[:5]}")
    for name, kind in slots.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        current = getattr(owner, kind)[leaf]
        tensor = weights[name]
        if tuple(tensor.shape) != tuple(current.shape):
            raise RuntimeError(f"size mismatch for {name}: the checkpoint has {tuple(tensor.shape)}, "
                               f"the model {tuple(current.shape)}")
        if kind == "_parameters":
            owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=current.requires_grad)
        else:
            owner._buffers[leaf] = tensor


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
