import torch

unsafe_torch_load = torch.load


def load(filename, *args, **kwargs):
    return unsafe_torch_load(filename, *args, **kwargs)
