"""Where a module lives: one answer for every part of torchbridge that must know."""

from __future__ import annotations

from itertools import chain

import torch

__all__ = ["module_device", "module_float_dtype"]


def module_device(module: torch.nn.Module) -> torch.device | None:
    """module_device(module) -> device of its first parameter, else first buffer, else None."""
    for tensor in chain(module.parameters(), module.buffers()):
        return tensor.device
    return None


def module_float_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """module_float_dtype(module) -> dtype of its first floating-point parameter or buffer."""
    for tensor in chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None
