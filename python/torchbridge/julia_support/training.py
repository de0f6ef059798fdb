"""Training with torch's optimisers over a bridged model's shared gradient buffers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..bridged import BridgedModel, bridged_model
from ..errors import CotangentError, TrainingError, UnsupportedArrayError
from ..exchange import describe_array, to_torch
from ..outputs import flatten_outputs
from ..precision import float32_loss
from .step import Layout, receivable, settle

__all__ = [
    "TorchOptimizer",
    "TorchTrainer",
    "optimizer",
    "optimizer_step",
    "set_learning_rate",
    "train_step",
    "trainer",
]


class TorchOptimizer:
    """A torch optimiser (and optional schedule) over a bridged model's parameters.

    The gradients it applies are the model's gradient buffers, the memory that
    TorchBridge.jl sees as ``model.grads``: whatever Julia wrote there (the
    pullback's result, or a gradient copied back by ``Optimisers.update!``) is
    what the step uses.
    """

    def __init__(self, model: BridgedModel, spec: Mapping[str, Any], schedule=None):
        from ..train import optimizer_from_spec, schedule_from_spec

        self.model = model = bridged_model(model, "optimizer")
        self.spec = dict(spec)
        self.optimizer = optimizer_from_spec(self.spec, list(model.parameters))
        self.scheduler = (
            None if schedule is None else schedule_from_spec(dict(schedule), self.optimizer)
        )
        self.steps = 0

    def step(self, grads: Sequence[Any] | None = None) -> None:
        """Apply the gradients in the model's buffers, or ``grads`` (one array per
        parameter, ``None`` for one whose gradient is in its buffer), then advance
        the schedule.

        Raises:
            CotangentError: a gradient is not an array of its parameter's shape,
                element type and device (nothing is applied).
        """
        model = self.model
        with model.lock:
            model.attach_grads()
            if grads is not None:
                views = _gradient_views(model, grads)
                for p, g in zip(model.parameters, views):
                    if g is not None:
                        p.grad = g
            try:
                self.optimizer.step()
            finally:
                model.attach_grads()  # .grad is each parameter's buffer again
            if self.scheduler is not None:
                self.scheduler.step()
            settle(model)  # Julia reads the parameters next, on its own stream
        self.steps += 1

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def optimizer(
    model: BridgedModel, spec: Mapping[str, Any], *, schedule: Mapping[str, Any] | None = None
) -> TorchOptimizer:
    """optimizer(model, spec, *, schedule=None) -> TorchOptimizer

    ``spec`` is an Optimisers.jl rule as a dict (``{"rule": "Adam", "eta": ...}``,
    see :func:`torchbridge.train.optimizer_from_spec`); ``schedule`` a
    :func:`torchbridge.train.schedule_from_spec` dict.
    """
    return TorchOptimizer(model, spec, schedule)


def optimizer_step(opt: TorchOptimizer, grads: Sequence[Any] | None = None) -> float:
    """optimizer_step(opt, grads=None) -> learning rate used: one optimiser step.

    Without ``grads``, from the model's gradient buffers. With ``grads`` (one
    array per parameter, in ``param_names`` order, viewed without a copy;
    ``None`` for one whose gradient is in its buffer), from those arrays: what
    ``Optimisers.update!`` with a ``TorchOptimiser`` passes, so the tangent a
    Julia AD returned is applied as it is, without being copied back.
    """
    lr = opt.learning_rate
    opt.step(grads)
    return lr


def set_learning_rate(opt: TorchOptimizer, eta: float) -> None:
    """set_learning_rate(opt, eta) -> None: set η of every group (a schedule rescales it)."""
    for group in opt.optimizer.param_groups:
        group["lr"] = float(eta)
        if "initial_lr" in group:
            group["initial_lr"] = float(eta)
    if opt.scheduler is not None:
        opt.scheduler.base_lrs = [float(eta)] * len(opt.optimizer.param_groups)


class TorchTrainer:
    """One torch-native step: zero the buffers, forward, loss, backward, optimiser step.

    Unlike :class:`torchbridge.train.TrainStep`, the gradient buffers are zeroed
    in place, never replaced, so Julia's views of them stay valid. A batch's
    input is one array, or a mapping of keyword inputs (``input_ids``,
    ``attention_mask``: a text batch). The loss applies to the output named
    ``output`` (``"logits"``), or to the only output when ``output`` is
    ``None``, and is computed in float32 (NOTE [precision] in
    :mod:`torchbridge.precision`); the forward runs under the model's autocast.
    """

    def __init__(
        self,
        opt: TorchOptimizer,
        loss: Any,
        loss_options: Mapping | None = None,
        output: str | None = None,
    ):
        from ..train import loss_from_name

        self.opt = opt
        self.loss_fn = loss_from_name(loss, **dict(loss_options or {}))
        self.output = output

    def step(self, x: Any, y: Any) -> tuple[float, torch.Tensor]:
        model = self.opt.model
        if isinstance(x, Mapping):
            values, names = model.checked_inputs(**x)
        else:
            values, names = model.checked_inputs(x)
        npos = len(values) - len(names)
        targets = to_torch(y)
        with model.lock:
            # The buffers first: a backward into a replaced .grad would leave the
            # step below applying the buffers' zeros (NOTE [gradient buffers]).
            model.attach_grads()
            model.zero_grad()
            with torch.enable_grad():
                # the bridge's own run: through DDP under torch.distributed (it
                # averages the gradients), with its shape errors and cleanup
                outputs = self._selected(model._run(values, npos, names))
                loss = float32_loss(self.loss_fn, outputs, targets)
                if loss.ndim != 0:
                    raise UnsupportedArrayError(
                        f"train_step: the loss must be a scalar, got torch shape "
                        f"{tuple(loss.shape)}; use agg='mean' or 'sum'."
                    )
                loss.backward()
            self.opt.step()
        return float(loss.detach()), outputs.detach()

    def _selected(self, outputs: Any) -> torch.Tensor:
        flat, structure = flatten_outputs(outputs)
        flat = self.opt.model.returned(flat)  # float32 under autocast
        if self.output is not None:
            try:
                return flat[structure.index(self.output)]
            except KeyError as exc:
                raise TrainingError(f"train_step: output={self.output!r}: {exc.args[0]}") from None
        if len(flat) != 1:
            raise TrainingError(
                f"train_step: the model returns {len(flat)} outputs "
                f"({', '.join(structure.names) or 'unnamed'}); say which one the loss applies "
                "to (TorchBridge.jl: load_model(id; output = :logits))"
            )
        return flat[0]


def trainer(
    opt: TorchOptimizer,
    loss: Any,
    *,
    loss_options: Mapping | None = None,
    output: str | None = None,
) -> TorchTrainer:
    """trainer(opt, loss, *, loss_options=None, output=None) -> TorchTrainer

    ``loss`` is a Flux loss name; ``output`` names the output it applies to.
    """
    return TorchTrainer(opt, loss, loss_options, output)


def train_step(
    trainer: TorchTrainer, x: Any, y: Any
) -> tuple[float, tuple[torch.Tensor], tuple[Layout], tuple[int | None]]:
    """train_step(trainer, x, y) -> (loss, outputs, layouts, addresses)

    One torch-native step on a batch. The model's output comes back as a
    one-tuple, with its layout and address, in the form Julia receives any
    result in (:func:`~torchbridge.julia_support.step.receivable`).
    """
    loss, output = trainer.step(x, y)
    return (loss, *receivable(trainer.opt.model, (output,)))


def _gradient_views(model: BridgedModel, grads: Sequence[Any]) -> list:
    # a view of each gradient given, checked against its parameter before any is applied
    if len(grads) != len(model.parameters):
        raise CotangentError(
            f"optimizer_step: {len(grads)} gradient(s) for {len(model.parameters)} parameters."
        )
    views = []
    for name, p, g in zip(model.param_names, model.parameters, grads):
        if g is None:
            views.append(None)
            continue
        t = to_torch(g)
        if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
            raise CotangentError(
                f"optimizer_step: the gradient of {name!r} is a {describe_array(t)}; its "
                f"parameter is {p.dtype} of torch shape {tuple(p.shape)} on {p.device}."
            )
        views.append(t)
    return views
