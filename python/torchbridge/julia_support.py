"""The calls TorchBridge.jl makes, each one round trip, with plain results.

TorchBridge.jl (``julia/``) keeps its logic here, where it is tested, and calls
only the functions of this module, the public names of :mod:`torchbridge`, and
``torch.from_dlpack``. ``tests/test_julia_contract.py`` checks every such call
in the Julia sources against the signatures below.

Arrays arrive either as torch tensors that DLPack.jl made from Julia arrays
(``DLPack.share(x, torch.from_dlpack)``: a C-contiguous tensor with the Julia
dimensions reversed) or as raw Julia arrays that PythonCall passes through the
buffer protocol (column-major); :func:`torchbridge.exchange.to_torch` views
both as the same tensor without a copy (NOTE [dimension order] in
:mod:`torchbridge.exchange`).

NOTE [results cross to a Julia owner]
Nothing torch allocates is handed to Julia by reference. A forward or a
pullback returns its tensors together with their *layouts*
(:func:`torchbridge.exchange.julia_layout`: Julia size, element type, device);
Julia allocates arrays of those sizes, shares them, and :func:`copy_out` fills
them. Julia then drops its handles to the torch tensors at once, so no torch
memory waits for Julia's garbage collector (the DLPack.jl #26 leak).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .bridged import BridgedModel, Pullback
from .errors import UnsupportedArrayError
from .exchange import copy_into, julia_layout, to_torch

__all__ = [
    "TorchOptimizer",
    "TorchTrainer",
    "copy_out",
    "entry_row",
    "fastai_rows",
    "forward",
    "info_row",
    "layouts",
    "memory_stats",
    "model_state",
    "optimizer",
    "optimizer_step",
    "pullback",
    "registry_rows",
    "release",
    "replace_head",
    "scope_enter",
    "scope_exit",
    "search_rows",
    "set_learning_rate",
    "synchronize",
    "train_step",
    "trainer",
]

Layout = tuple[tuple[int, ...], str, str, int]


# -- the model -----------------------------------------------------------------


def model_state(model: BridgedModel) -> dict[str, Any]:
    """model_state(model) -> dict: what TorchBridge.jl wraps once, when it wraps a model.

    Keys: ``param_names`` (tuple of str), ``params`` and ``grads`` (tuples of
    tensors, C-contiguous, over the model's own memory; a 0-dim parameter is
    given as a 1-element view so DLPack can carry it), ``device`` (``"cpu"`` or
    ``"cuda"``), ``device_index`` (-1 on the CPU) and ``dtype`` (Julia's name,
    e.g. ``"Float32"``).

    Raises:
        UnsupportedArrayError: a parameter or gradient buffer is not
            C-contiguous (channels-last weights, transposed views): Julia could
            only see it with a copy. Call ``module.to(memory_format=torch.contiguous_format)``
            before bridging.
    """
    params, grads = [], []
    for name, p, g in zip(model.param_names, model.params, model.grads, strict=True):
        for kind, t in (("parameter", p), ("gradient buffer", g)):
            if not t.is_contiguous():
                raise UnsupportedArrayError(
                    f"model_state: the {kind} of {name!r} (torch shape {tuple(t.shape)}, "
                    f"strides {t.stride()}) is not C-contiguous, so Julia cannot view it "
                    "without a copy. Make the module contiguous first: "
                    "module.to(memory_format=torch.contiguous_format)."
                )
        params.append(p if p.dim() else p.reshape(1))
        grads.append(g if g.dim() else g.reshape(1))
    device = model.device if model.device is not None else torch.device("cpu")
    _, eltype, _, _ = julia_layout(params[0]) if params else ((), "Float32", "", -1)
    return {
        "param_names": tuple(model.param_names),
        "params": tuple(params),
        "grads": tuple(grads),
        "device": device.type,
        "device_index": -1 if device.index is None else device.index,
        "dtype": eltype,
    }


def layouts(tensors: Sequence[torch.Tensor | None]) -> tuple[Layout | None, ...]:
    """layouts(tensors) -> tuple: ``julia_layout`` of each tensor, ``None`` kept."""
    return tuple(None if t is None else julia_layout(t) for t in tensors)


def forward(
    model: BridgedModel, *inputs: Any, grad: bool = True, input_grads: bool | Sequence[bool] = True
) -> tuple[tuple[torch.Tensor, ...], Pullback | None, tuple[Layout, ...]]:
    """forward(model, *inputs, grad=True, input_grads=True) -> (outputs, pullback, layouts)

    :meth:`BridgedModel.forward` plus the layouts Julia needs to allocate the
    receiving arrays (see NOTE [results cross to a Julia owner]).
    """
    outputs, pullback = model.forward(*inputs, grad=grad, input_grads=input_grads)
    return outputs, pullback, layouts(outputs)


def pullback(
    pullback: Pullback, *cotangents: Any, accumulate: bool = False
) -> tuple[tuple[torch.Tensor | None, ...], tuple[Layout | None, ...]]:
    """pullback(pullback, *cotangents, accumulate=False) -> (input_grads, layouts)

    Runs the one-shot ``pullback`` (parameter gradients land in the model's
    gradient buffers) and returns the input gradients with their layouts. On
    any error the pullback is released before the error propagates, so a
    failed step holds no graph.
    """
    try:
        grads = pullback(*cotangents, accumulate=accumulate)
    except BaseException:
        pullback.release()
        raise
    return grads, layouts(grads)


def release(pullback: Pullback | None) -> bool:
    """release(pullback) -> bool: free the pullback's graph without computing; idempotent."""
    return False if pullback is None else pullback.release()


def copy_out(destinations: Sequence[Any], tensors: Sequence[torch.Tensor | None]) -> None:
    """copy_out(destinations, tensors) -> None

    Copies each tensor into its destination (caller-owned memory, e.g. a Julia
    array shared with DLPack.jl); a ``None`` tensor or destination is skipped.
    When a destination is on a CUDA device, waits for torch's stream so the
    caller may read at once.
    """
    if len(destinations) != len(tensors):
        raise UnsupportedArrayError(
            f"copy_out: {len(destinations)} destination(s) for {len(tensors)} tensor(s)."
        )
    cuda = False
    for dest, t in zip(destinations, tensors, strict=True):
        if dest is None or t is None:
            continue
        copy_into(dest, t)
        cuda = cuda or t.device.type == "cuda"
    if cuda:
        torch.cuda.current_stream().synchronize()


def synchronize(device_index: int = -1) -> None:
    """synchronize(device_index=-1) -> None: wait for torch's current CUDA stream (no-op on CPU)."""
    if device_index >= 0 and torch.cuda.is_available():
        torch.cuda.current_stream(device_index).synchronize()


# -- memory --------------------------------------------------------------------


def memory_stats() -> dict[str, Any]:
    """memory_stats() -> dict: :func:`torchbridge.memory.stats` as plain values."""
    from . import memory

    return memory.stats().to_dict()


def scope_enter() -> Any:
    """scope_enter() -> scope: open a ``torchbridge.memory.scope``; close it with ``scope_exit``."""
    from . import memory

    cm = memory.scope()
    cm.__enter__()
    return cm


def scope_exit(scope: Any) -> None:
    """scope_exit(scope) -> None: close a ``scope_enter`` scope, releasing its pullbacks."""
    scope.__exit__(None, None, None)


# -- the registry ----------------------------------------------------------------

_ROW_FIELDS = (
    "id",
    "source",
    "name",
    "task",
    "description",
    "pretrained",
    "cached",
    "input_size",
    "julia_input_size",
    "mean",
    "std",
    "num_classes",
    "license",
    "tags",
)


def entry_row(entry: Any) -> dict[str, Any]:
    """entry_row(entry) -> dict: a ``ModelEntry`` as the plain row TorchBridge.jl shows.

    Keys are :data:`_ROW_FIELDS`; sizes are lists (``julia_input_size`` is the
    reverse of ``input_size``), ``cached`` says whether the pretrained weights
    are on this machine, missing values are ``None``.
    """
    d = entry.to_dict()
    weights = d.get("weights") or {}
    row = {key: d.get(key) for key in _ROW_FIELDS if key != "cached"}
    row["cached"] = bool(weights.get("cached", False))
    row["tags"] = list(d.get("tags") or [])
    return row


def registry_rows(
    pattern: str | None = None,
    *,
    source: str | None = None,
    pretrained: bool | None = None,
    task: str | None = None,
) -> list[dict[str, Any]]:
    """registry_rows(pattern=None, *, source=None, pretrained=None, task=None) -> list of rows."""
    from . import registry

    entries = registry.list_models(pattern, source=source, pretrained=pretrained, task=task)
    return [entry_row(e) for e in entries]


def search_rows(query: str, *, limit: int = 20) -> list[dict[str, Any]]:
    """search_rows(query, *, limit=20) -> list of rows, best match first."""
    from . import registry

    return [entry_row(e) for e in registry.search_models(query, limit=limit)]


def info_row(model_id: str) -> dict[str, Any]:
    """info_row(model_id) -> row: what the registry knows about one model."""
    from . import registry

    return entry_row(registry.model_info(model_id))


# -- FastAI.jl's model registry ----------------------------------------------------


def fastai_rows(*, source: str = "timm") -> dict[str, list[str]]:
    """fastai_rows(*, source="timm") -> dict of columns ``id``, ``description``, ``checkpoint``

    The models TorchBridge.jl's FastAI extension adds to FastAI.jl's model
    registry: every image classifier of ``source`` that has published weights
    under a pretrained tag (``timm/resnet18.a1_in1k``, checkpoint ``"a1_in1k"``).
    Untagged architecture names (``timm/resnet18``, which loads its default
    tag) and models without weights are left out, so each row names exactly
    one set of weights. Columns rather than rows: Julia converts three lists
    instead of one dict per model.
    """
    from . import registry

    ids, descriptions, checkpoints = [], [], []
    for e in registry.list_models(source=source, pretrained=True, task="image-classification"):
        _, _, tag = e.name.partition(".")
        if not tag:
            continue
        ids.append(e.id)
        descriptions.append(e.description)
        checkpoints.append(tag)
    return {"id": ids, "description": descriptions, "checkpoint": checkpoints}


def replace_head(model: BridgedModel, num_classes: int, *, model_id: str) -> BridgedModel:
    """replace_head(model, num_classes, *, model_id) -> BridgedModel

    The bridged module with a new classifier of ``num_classes`` outputs
    (:func:`torchbridge.registry.heads.replace_classifier`; ``0`` removes it, so
    the model returns its pooled features), bridged anew. ``model`` is closed
    first: its parameter list changes, so the Julia arrays over it must not be
    used again. The new layer is moved to the model's device and floating-point
    type. ``model_id`` names the model in error messages.
    """
    from .bridged import bridge
    from .registry.heads import replace_classifier

    module, device, dtype = model.module, model.device, model.dtype
    model.close()
    replace_classifier(module, num_classes, model_id=model_id)
    if device is not None:
        module.to(device=device, dtype=dtype)
    return bridge(module)


# -- training: torch optimisers over a bridged model -------------------------------


def _parameters(model: BridgedModel) -> list[torch.nn.Parameter]:
    return list(model.parameters)


class TorchOptimizer:
    """A torch optimiser (and optional schedule) over a bridged model's parameters.

    The gradients it applies are the model's gradient buffers, the memory that
    TorchBridge.jl sees as ``model.grads``: whatever Julia wrote there (the
    pullback's result, or a gradient copied back by ``Optimisers.update!``) is
    what the step uses.
    """

    def __init__(self, model: BridgedModel, spec: Mapping[str, Any], schedule=None):
        from .train import optimizer_from_spec, schedule_from_spec

        self.model = model
        self.spec = dict(spec)
        self.optimizer = optimizer_from_spec(self.spec, _parameters(model))
        self.scheduler = (
            None if schedule is None else schedule_from_spec(dict(schedule), self.optimizer)
        )
        self.steps = 0

    def step(self) -> None:
        """Apply the gradients in the model's buffers, then advance the schedule."""
        model = self.model
        with model.lock:
            for p, g in zip(_parameters(model), model.grads, strict=True):
                if p.grad is not g:  # see NOTE [gradient buffers] in torchbridge.bridged
                    p.grad = g
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
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


def optimizer_step(opt: TorchOptimizer) -> float:
    """optimizer_step(opt) -> learning rate used: one step from the model's gradient buffers."""
    lr = opt.learning_rate
    opt.step()
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
    in place, never replaced, so Julia's views of them stay valid.
    """

    def __init__(self, opt: TorchOptimizer, loss: Any, loss_options: Mapping | None = None):
        from .train import loss_from_name

        self.opt = opt
        self.loss_fn = loss_from_name(loss, **dict(loss_options or {}))

    def step(self, x: Any, y: Any) -> tuple[float, torch.Tensor]:
        model = self.opt.model
        inputs, targets = to_torch(x), to_torch(y)
        with model.lock:
            model.zero_grad()
            with torch.enable_grad():
                outputs = model.module(inputs)
                loss = self.loss_fn(outputs, targets)
                if loss.ndim != 0:
                    raise UnsupportedArrayError(
                        f"train_step: the loss must be a scalar, got torch shape "
                        f"{tuple(loss.shape)}; use agg='mean' or 'sum'."
                    )
                loss.backward()
            self.opt.step()
        return float(loss.detach()), outputs.detach()


def trainer(opt: TorchOptimizer, loss: Any, *, loss_options: Mapping | None = None) -> TorchTrainer:
    """trainer(opt, loss, *, loss_options=None) -> TorchTrainer: ``loss`` is a Flux loss name."""
    return TorchTrainer(opt, loss, loss_options)


def train_step(trainer: TorchTrainer, x: Any, y: Any) -> tuple[float, torch.Tensor, Layout]:
    """train_step(trainer, x, y) -> (loss, outputs, layout): one torch-native step on a batch."""
    loss, outputs = trainer.step(x, y)
    return loss, outputs, julia_layout(outputs)
