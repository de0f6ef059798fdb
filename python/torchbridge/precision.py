"""Floating-point precision: the dtype a model holds, autocast, and float32 losses.

NOTE [precision]
A model computes in 16 bits in one of two ways, which differ in where the
weights live:

* ``dtype="bfloat16"`` (``load_model(id, dtype=...)``, Julia ``dtype = :bfloat16``):
  the weights themselves are bfloat16, half the memory of float32. Parameters,
  gradient buffers and floating-point outputs are bfloat16 (Julia ``BFloat16``
  arrays); floating-point inputs must be bfloat16 too.
* ``autocast="bfloat16"`` (``bridge(module, autocast=...)``, Julia
  ``load_model(id; autocast = :bfloat16)``, ``fit(..., mixed_precision="bfloat16")``):
  the weights stay float32 and the forward runs under ``torch.autocast``, which
  computes the matrix products in bfloat16 (on the CPU and on CUDA); autograd
  casts the gradients back, so they land in the float32 parameters. The
  bridge returns floating-point outputs in the parameters' dtype (float32), so
  a Julia loss and its cotangents stay ``Float32``. ``float16`` works the same
  way; on CUDA, ``fit`` and ``TrainStep`` scale its loss (``GradScaler``).

Either way, a loss torchbridge computes (``fit``, ``TrainStep``, Julia's
``TorchTrainer``/``fit_torch!``) is computed in float32: 16-bit outputs and
floating-point targets are upcast first (:func:`float32_loss`), as torch's
mixed-precision recipe does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .errors import PrecisionError

__all__ = ["AUTOCAST_DEVICES", "autocast_dtype", "float32_loss", "resolve_dtype"]

# names a user (or Julia: a Symbol's string) may give, -> torch dtype
_NAMES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}
_LOW = (torch.bfloat16, torch.float16)
#: the device types ``torch.autocast`` runs on here
AUTOCAST_DEVICES = ("cpu", "cuda")


def resolve_dtype(value: Any, *, what: str = "dtype") -> torch.dtype | None:
    """resolve_dtype(value, *, what="dtype") -> torch.dtype | None

    A floating-point dtype from a name (``"bfloat16"``, ``"bf16"``, ``"float16"``,
    ``"float32"`` ..., with or without ``torch.``) or a ``torch.dtype``; ``None``
    stays ``None``. ``what`` starts the error message.

    Raises:
        PrecisionError: the value names no floating-point dtype.
    """
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        if value.is_floating_point:
            return value
    elif isinstance(value, str):
        found = _NAMES.get(value.strip().lower().removeprefix("torch."))
        if found is not None:
            return found
    raise PrecisionError(
        f"{what}: {value!r} is not a floating-point type; use one of "
        "'bfloat16', 'float16', 'float32', 'float64' (Julia: :bfloat16 ...) or a torch dtype."
    )


def autocast_dtype(value: Any, device: torch.device | None, *, what: str = "autocast") -> Any:
    """autocast_dtype(value, device, *, what="autocast") -> torch.dtype | None

    The dtype ``torch.autocast`` is to compute in on ``device`` (``None``: the
    CPU): ``bfloat16`` or ``float16``. ``None`` means no autocast.

    Raises:
        PrecisionError: not a 16-bit type, or autocast does not run on that device.
    """
    dtype = resolve_dtype(value, what=what)
    if dtype is None:
        return None
    if dtype not in _LOW:
        raise PrecisionError(
            f"{what}: autocast computes in 'bfloat16' or 'float16', not {dtype}; for another "
            "precision load the model in it (load_model(id, dtype=...))."
        )
    kind = "cpu" if device is None else device.type
    if kind not in AUTOCAST_DEVICES:
        raise PrecisionError(
            f"{what}: torch.autocast runs on {' and '.join(AUTOCAST_DEVICES)}, and the model "
            f"is on {kind}; move it, or load it in {dtype} instead (dtype=...)."
        )
    return dtype


def _upcast(t: Any) -> Any:
    if isinstance(t, torch.Tensor) and t.dtype in _LOW:
        return t.float()
    return t


def float32_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    outputs: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """float32_loss(loss_fn, outputs, targets) -> Tensor

    ``loss_fn(outputs, targets)`` with 16-bit outputs and targets upcast to
    float32 first (NOTE [precision]); the gradient flows back to the outputs
    in their own dtype. Integer targets (class indices) are left as they are.
    """
    return loss_fn(_upcast(outputs), _upcast(targets))
