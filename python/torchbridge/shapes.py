"""Output shapes without data: a module run on fake tensors.

``output_shapes(module, (2, 3, 224, 224))`` runs the module's forward under
torch's ``FakeTensorMode``: every tensor is a shape and a dtype on the
module's device, no arithmetic runs and no memory is allocated for values.
The module's parameters and buffers are swapped for fake copies for the
call (``torch.func.functional_call``), so a module in training mode updates
fake BatchNorm statistics, never its own. This is what Flux's
``outputsize`` asks of a ``TorchModel`` from Julia.

A module whose output shape depends on its input's values (boolean masks,
``.item()``) cannot be sized this way: :class:`OutputSizeUnknownError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .bridged import is_shape_error
from .devices import module_device, module_float_dtype
from .errors import InputShapeError, OutputSizeUnknownError
from .outputs import OutputStructure, flatten_outputs

__all__ = ["output_shapes"]


def output_shapes(
    module: torch.nn.Module,
    *sizes: Sequence[int],
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[tuple[tuple[int, ...], ...], OutputStructure]:
    """output_shapes(module, *sizes, dtype=None, device=None) -> (shapes, structure)

    The torch shape of each output tensor of ``module(*inputs)`` for inputs of
    the given torch-order ``sizes`` (depth-first, as the bridge flattens
    outputs), and the outputs' structure (names, for a ``ModelOutput`` or a
    dict). Inputs have ``dtype`` (default: the module's floating-point type,
    else float32) and live on ``device`` (default: the module's).

    Raises:
        InputShapeError: the module rejects inputs of these sizes (the message
            is the module's own).
        OutputSizeUnknownError: the output size depends on the input's values.

    Other errors of the forward (an operator fake tensors do not support)
    propagate as they are.
    """
    from torch._subclasses.fake_tensor import (
        DataDependentOutputException,
        DynamicOutputShapeException,
        FakeTensorMode,
    )

    # every tensor the forward may read, tied and non-persistent ones included
    named = [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]
    if dtype is None:
        dtype = module_float_dtype(module) or torch.float32
    if device is None:
        device = module_device(module) or torch.device("cpu")
    shapes = [tuple(int(d) for d in s) for s in sizes]
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    try:
        with mode, torch.no_grad():
            state = {name: mode.from_tensor(t) for name, t in named}
            inputs = tuple(torch.empty(s, dtype=dtype, device=device) for s in shapes)
            result = torch.func.functional_call(module, state, inputs, strict=False)
    except (DataDependentOutputException, DynamicOutputShapeException) as err:
        raise OutputSizeUnknownError(
            f"{type(module).__name__}: the output size depends on the values of the input "
            f"({err}), so it cannot be computed from sizes alone; run the model on data"
        ) from None
    except Exception as err:
        if is_shape_error(err):
            raise InputShapeError(
                f"{type(module).__name__} rejects inputs of torch sizes {shapes}: {err}"
            ) from None
        raise
    flat, structure = flatten_outputs(result)
    return tuple(tuple(t.shape) for t in flat), structure
