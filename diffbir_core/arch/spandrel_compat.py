"""Small adapters that let spandrel's architecture classes be built the way our loader builds networks."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode


class LinspaceOnCPU(TorchFunctionMode):
    """Run `torch.linspace` on the CPU while a spandrel network is constructed.

    spandrel's constructors turn `torch.linspace(...)` (stochastic-depth rates) into floats
    with `.item()`, which a meta tensor cannot do. Computing those few floats on the CPU lets
    the rest of construction stay on the caller's default device, so
    `with torch.device("meta"): build()` allocates nothing.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.linspace:
            kwargs = {**kwargs, "device": "cpu"}
        return func(*args, **kwargs)
