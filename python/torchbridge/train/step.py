"""One torch-native training step: forward, loss, backward, optimiser step, zero-grad.

This is the fast path for training a torch model from either language: the
whole step runs in torch, and the only thing that crosses the boundary is the
batch, viewed without a copy by :func:`torchbridge.exchange.to_torch`.

Under a process group of more than one process (:func:`torchbridge.distributed.init`)
the step runs the model through its ``DistributedDataParallel`` wrapper, so the
backward averages the gradients over the ranks and every rank's optimiser takes
the same step: each rank passes its own share of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .. import distributed
from ..devices import module_device
from ..errors import TrainingError
from ..exchange import to_torch
from ..precision import autocast_dtype, float32_loss

__all__ = ["StepResult", "TrainStep", "as_batch", "as_inputs", "call_model"]


def as_batch(obj: Any, device: torch.device) -> torch.Tensor:
    """as_batch(obj, device) -> Tensor: ``obj`` viewed as a tensor (no copy) on ``device``.

    Foreign arrays (numpy, DLPack producers, Julia arrays) go through
    :func:`torchbridge.exchange.to_torch` and its layout rule: an array keeps its
    own shape, a raw Julia ``(W, H, C, N)`` batch from PythonCall arrives as torch
    ``(N, C, H, W)``. Moving to another device copies.
    """
    tensor = to_torch(obj)
    if tensor.device != device:
        tensor = tensor.to(device, non_blocking=True)
    return tensor


def as_inputs(obj: Any, device: torch.device) -> torch.Tensor | dict[str, torch.Tensor]:
    """as_inputs(obj, device) -> Tensor | dict: a batch's inputs, one array or a mapping of them.

    A mapping (``{"input_ids": ..., "attention_mask": ...}``, a tokenizer's
    ``BatchEncoding``) is passed to the model as keyword inputs, each viewed
    with :func:`as_batch`.
    """
    if isinstance(obj, Mapping):
        return {str(k): as_batch(v, device) for k, v in obj.items()}
    return as_batch(obj, device)


def call_model(model: torch.nn.Module, inputs: Any) -> torch.Tensor:
    """call_model(model, inputs) -> Tensor: the model's scores for a loss.

    Keyword inputs for a mapping; of a named output (a transformers
    ``ModelOutput``, a dict) its ``logits``, else its first tensor; of a tuple,
    its first item.
    """
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        if "logits" in out:
            return out["logits"]
        return next(v for v in out.values() if isinstance(v, torch.Tensor))
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TrainingError(
        f"the model returned a {type(out).__name__}; training needs a tensor of scores, a "
        "named output with logits, or a tuple whose first item is the scores."
    )


@dataclass(frozen=True)
class StepResult:
    """What one training step produced, detached from the graph."""

    loss: torch.Tensor  # 0-dim, on the model's device (no host sync was forced)
    outputs: torch.Tensor
    targets: torch.Tensor  # the batch's targets as the tensor the loss saw


class TrainStep:
    """TrainStep(model, optimizer, loss_fn, *, device=None, mixed_precision=False)

    A callable ``step(x, y) -> StepResult`` running one optimisation step of
    ``model`` on the batch ``(x, y)``. ``x`` and ``y`` may be torch tensors or
    foreign arrays (see :func:`as_batch`).

    ``mixed_precision=True`` runs the forward pass under ``torch.autocast``:
    float16 with a ``GradScaler`` on CUDA, bfloat16 on the CPU (where no scaler
    is needed). ``mixed_precision="bfloat16"`` (or ``"float16"``) names the
    autocast type on either device; float16 on CUDA gets the scaler. The
    parameters and the optimiser state stay float32. The loss is computed in
    float32 whatever the outputs' type (NOTE [precision] in
    :mod:`torchbridge.precision`), also for a model loaded in bfloat16.

    The model's mode is left as it is: call ``model.train()`` first.

    When a process group of more than one process exists, the step wraps
    ``model`` in ``DistributedDataParallel`` (:func:`torchbridge.distributed.wrap`;
    creating the step is then a collective: rank 0's weights are broadcast) and
    each call averages the gradients over the ranks; ``self.model`` stays the
    module given, so its ``state_dict`` has no ``module.`` prefix. A failed
    collective is a :class:`~torchbridge.errors.RankFailedError`.
    ``step(x, y, weight=w)`` multiplies the loss by ``w`` before the backward
    pass (:func:`~torchbridge.train.fit` uses it when the ranks' shares of a
    batch differ in size); the loss returned is the unweighted one.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        device: torch.device | str | None = None,
        mixed_precision: bool | str | torch.dtype = False,
    ):
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        if device is None:
            device = module_device(model) or torch.device("cpu")
        self.device = torch.device(device)
        self.mixed_precision = mixed_precision
        # a module the caller wrapped in DDP already is used as it is
        self.ddp = distributed.wrap(model)
        # Gradients that exist already may be shared (a bridged model's buffers
        # are Julia's view of the gradients): zero those in place instead of
        # dropping them, which would cut the shared memory off.
        self._zero_in_place = any(p.grad is not None for p in model.parameters())
        self._autocast_dtype: torch.dtype | None = None
        self._scaler = None
        if mixed_precision is True:
            if self.device.type == "cuda":
                self._autocast_dtype = torch.float16
            elif self.device.type == "cpu":
                self._autocast_dtype = torch.bfloat16
            else:
                raise TrainingError(
                    f"TrainStep: mixed precision is supported on cuda and cpu, not on "
                    f"{self.device.type}; pass mixed_precision=False."
                )
        elif mixed_precision is not False:
            self._autocast_dtype = autocast_dtype(
                mixed_precision, self.device, what="TrainStep: mixed_precision"
            )
        if self._autocast_dtype is torch.float16 and self.device.type == "cuda":
            self._scaler = torch.amp.GradScaler("cuda")

    def __call__(self, x: Any, y: Any, *, weight: float = 1.0) -> StepResult:
        inputs = as_inputs(x, self.device)
        targets = as_batch(y, self.device)
        if self.ddp is None:
            return self._step(self.model, inputs, targets, weight)
        try:
            return self._step(self.ddp, inputs, targets, weight)
        except RuntimeError as exc:
            failure = distributed.rank_failure(exc, "TrainStep")
            if failure is None:
                raise
            raise failure from exc

    def _step(self, model, inputs, targets, weight: float) -> StepResult:
        if self._autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self._autocast_dtype):
                outputs = call_model(model, inputs)
        else:
            outputs = call_model(model, inputs)
        # the loss in float32: low precision is for the model's matmuls
        loss = float32_loss(self.loss_fn, outputs, targets)
        if loss.ndim != 0:
            raise TrainingError(
                f"TrainStep: the loss must be a scalar, got shape {tuple(loss.shape)}; "
                "use agg='mean' or 'sum'."
            )
        scaled = loss if weight == 1.0 else loss * weight
        if self._scaler is not None:
            self._scaler.scale(scaled).backward()
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            scaled.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=not self._zero_in_place)
        return StepResult(loss=loss.detach(), outputs=outputs.detach(), targets=targets)
