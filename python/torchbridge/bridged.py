"""The autograd bridge: a torch module called and differentiated from another language.

``bridge(module)`` wraps a module once. Its parameters and one persistent
gradient buffer per parameter are shared with the caller at that moment; from
then on each training step moves only the batch, the outputs, the cotangents
and the input gradients.

``forward(*inputs, **kw_inputs)`` runs the module on views of foreign arrays
and returns the outputs with a one-shot :class:`Pullback` that owns the graph. Calling the
pullback writes the parameter gradients into the model's gradient buffers,
returns the input gradients, and frees the graph at once.

NOTE [plain autograd, not torch.func]
The forward calls the module itself under ``torch.enable_grad()`` and the
pullback runs ``torch.autograd.backward``. ``torch.func.vjp`` over
``functional_call`` fails on train-mode BatchNorm (it refuses the in-place
update of ``num_batches_tracked`` on a captured tensor), which is exactly what
broke earlier bridges on torchvision and timm ResNets. Plain autograd updates
running statistics exactly as PyTorch training does and costs the same.

NOTE [gradient buffers]
Each trainable parameter ``p`` gets a buffer ``g`` allocated once, and
``p.grad`` is set to ``g``. The pullback zeroes the buffers (unless
``accumulate=True``) and lets autograd accumulate into them in place, so the
memory a foreign optimiser reads never moves, and torch's own optimisers see
the same gradients. If something replaces ``p.grad`` (``zero_grad(set_to_none=True)``
does), the next pullback puts the buffer back.

NOTE [keyword inputs]
Keyword inputs (``input_ids=``, ``attention_mask=``, ``inputs_embeds=`` ...) are
inputs like the positional ones: arrays are viewed, never copied; floating-point
ones are differentiated unless ``input_grads`` says otherwise; integer ones
(token ids, masks) never are. A keyword value that is not an array (``None``, a
bool, a number, a string: ``output_hidden_states=True``) is passed as it is.
The pullback returns one gradient per input, positional inputs first, then the
keyword inputs in the order they were passed (``Pullback.input_names``), with
``None`` for every input that is not differentiated. Before the module runs,
token inputs are checked (NOTE [token inputs] in :mod:`torchbridge.textinputs`):
``input_ids`` and ``decoder_input_ids`` inside the vocabulary of the embedding
that reads each, every mask of the shape of the ids it masks.

NOTE [input dtypes]
Inputs are checked against the model before it runs, so a wrong type is a
:class:`~torchbridge.errors.DTypeMismatchError` naming both types instead of a
torch error from deep inside the module: a floating-point input of another
precision than the model's, and a complex input to a model whose parameters and
buffers are all real (a model with complex parameters takes complex inputs).
Integer inputs (token ids, masks) are never checked against the float type.

NOTE [bridged models under DDP]
When a process group of more than one process exists (``torchbridge.distributed.init()``),
``bridge`` wraps the module in ``DistributedDataParallel`` (one wrapper per
module, NOTE [one wrapper per module] in :mod:`torchbridge.distributed`), and a
forward with ``grad=True`` runs through it. DDP's hooks fire inside the
pullback's backward, so when the pullback returns, every rank's gradient
buffers hold the average over the ranks, in place (the buffers never move), and
an optimiser steps identically everywhere. ``module``, ``param_names`` and the
buffers stay the user's module's: no ``module.`` prefix. Bridging is then a
collective (rank 0's weights are broadcast), so every rank bridges the same
model at the same point, and as with any DDP model each forward's pullback must
reach every parameter: release a pullback rather than call it with cotangents
that leave a parameter without a gradient. ``grad=False`` runs the plain module
(no collective). A failed collective is a ``RankFailedError``
(NOTE [failures are bounded] in :mod:`torchbridge.distributed`).

NOTE [autocast at the bridge]
``bridge(module, autocast="bfloat16")`` runs every forward of a float32 module
under ``torch.autocast`` (NOTE [precision] in :mod:`torchbridge.precision`):
matrix products compute in bfloat16, the parameters and their gradient
buffers stay float32. Floating-point outputs are cast back to the parameters'
dtype before they are returned, inside the graph, so the caller's loss and
its cotangents are float32 and the cast's gradient flows back through torch.

The trainable set is fixed when the model is bridged: freeze parameters
(``requires_grad_(False)``) before bridging. Frozen parameters are neither
shared nor given a gradient buffer: a model with LoRA adapters (NOTE
[adapters] in :mod:`torchbridge.adapters`) shares the adapters alone. As in
plain PyTorch, a pullback accumulates into ``.grad`` of every leaf the
forward reached that requires a gradient; a parameter unfrozen after bridging
gets its gradient in its own ``.grad``, not in a shared buffer.
"""

from __future__ import annotations

import re
import threading
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .devices import module_device, module_float_dtype
from .distributed import rank_failure
from .distributed import wrap as _ddp_wrap
from .errors import (
    CotangentError,
    DeviceMismatchError,
    DTypeMismatchError,
    InputGradsError,
    InputShapeError,
    ModelClosedError,
    NotAModuleError,
    PrecisionError,
    PullbackReleasedError,
    UnsupportedArrayError,
    UnsupportedDTypeError,
)
from .exchange import describe_array, julia_eltype, julia_shape, to_torch
from .memory import LEDGER, tensor_bytes
from .outputs import OutputStructure, flatten_outputs
from .precision import autocast_dtype
from .textinputs import TextInputs

__all__ = ["BridgedModel", "OutputStructure", "Pullback", "bridge", "bridged_model"]

if hasattr(torch, "_foreach_zero_"):
    _zero_all = torch._foreach_zero_
else:  # pragma: no cover - older torch

    def _zero_all(tensors):
        for t in tensors:
            t.zero_()


# What torch and timm say when an input has the wrong rank or shape. A forward
# that fails with one of these is reported as an InputShapeError that names the
# shapes in both dimension orders.
_SHAPE_MESSAGES = re.compile(
    r"shapes cannot be multiplied|Expected \d+D|expected input\[|to have \d+ channels"
    r"|size mismatch|is invalid for input of size|The size of tensor a|must match the size"
    r"|doesn't match model|Input (height|width|image size)|expected.*dimensions?|"
    r"Given groups=|Expected .* got input|input must have|not enough values to unpack",
    re.IGNORECASE,
)


def is_shape_error(exc: BaseException) -> bool:
    """is_shape_error(exc) -> bool: whether a module's exception says its input had the
    wrong rank or shape (torch's and the common models' own messages)."""
    return isinstance(exc, (RuntimeError, ValueError, AssertionError, TypeError)) and bool(
        _SHAPE_MESSAGES.search(str(exc))
    )


def not_a_module_message(what: str, value: Any, expected: str = "a torch.nn.Module") -> str:
    """What ``what`` says when it is given ``value`` instead of a module: the kind of value it
    got, and how to make a module from what such a value usually is."""
    kind = type(value).__name__
    if isinstance(value, str):
        hint = (
            f"{value!r} reads as a model id: torchbridge.bridge(torchbridge.load_model("
            f"{value!r})), or TorchBridge.load_model from Julia."
        )
    elif isinstance(value, Mapping):
        hint = (
            "A mapping of names to tensors is a state dict, not a model: build the module "
            "(torchbridge.load_model(id, pretrained=False), or your own class) and call "
            "module.load_state_dict(state_dict) first."
        )
    elif isinstance(value, BridgedModel):
        hint = "It is bridged already: use it as it is, or bridge its .module again."
    elif callable(value):
        hint = (
            "A plain function has no parameters to share: wrap it in a torch.nn.Module "
            "subclass whose forward calls it."
        )
    elif hasattr(value, "__dlpack__") or hasattr(value, "__array_interface__"):
        hint = "An array is an input, not a model: pass it to the bridged model's forward."
    else:
        hint = "Load one with torchbridge.load_model(model_id) or build it in torch."
    return f"{what}: expected {expected}, got {kind}. {hint}"


def bridged_model(value: Any, what: str) -> BridgedModel:
    """bridged_model(value, what) -> value, when it is a :class:`BridgedModel`.

    For the calls that take a bridged model (the Julia-support façade): anything
    else is a :class:`~torchbridge.errors.NotAModuleError` naming ``what``.
    """
    if isinstance(value, BridgedModel):
        return value
    if isinstance(value, torch.nn.Module):
        raise NotAModuleError(
            f"{what}: expected a BridgedModel, got the unbridged {type(value).__name__}; "
            "bridge it first: torchbridge.bridge(module)."
        )
    raise NotAModuleError(
        not_a_module_message(what, value, "a BridgedModel (torchbridge.bridge(module))")
    )


def bridge(
    module: torch.nn.Module,
    *,
    input_shapes: Sequence[Sequence[int | None]] | None = None,
    distributed: bool = True,
    autocast: str | torch.dtype | None = None,
):
    """bridge(module, *, input_shapes=None, distributed=True, autocast=None) -> BridgedModel

    Wrap ``module`` for calls from another language. Its trainable parameters
    and a gradient buffer for each are shared from now on (see
    NOTE [gradient buffers]).

    Args:
        module: any ``torch.nn.Module``; it is used in place, not copied.
        input_shapes: optional expected shape of each input in torch order,
            ``None`` for a free dimension, e.g. ``[(None, 3, 224, 224)]``.
            Inputs that do not fit are refused before the module runs.
        distributed: when a process group of more than one process exists,
            wrap the module in ``DistributedDataParallel`` so the pullback
            averages the gradients over the ranks (NOTE [bridged models under
            DDP]); ``False`` keeps every rank's gradients its own.
        autocast: ``"bfloat16"`` or ``"float16"`` runs each forward of a float32
            module under ``torch.autocast`` on its device (CPU or CUDA); outputs
            come back float32 (NOTE [autocast at the bridge]).

    Raises:
        NotAModuleError: ``module`` is not a ``torch.nn.Module`` (a model id,
            a state dict, a function, an array ...); the message says how to
            make one of it.
        PrecisionError: ``autocast`` is not a 16-bit type, the module's
            device has no autocast, or the module already holds 16-bit weights.
    """
    return BridgedModel(
        module, input_shapes=input_shapes, distributed=distributed, autocast=autocast
    )


class BridgedModel:
    """BridgedModel: a torch module, its shared parameters and gradient buffers.

    Attributes:
        module: the wrapped ``torch.nn.Module``.
        param_names: names of the trainable parameters, in ``named_parameters`` order.
        params: the parameters themselves (detached aliases: same memory, no
            autograd history), ready to share through DLPack.
        grads: one gradient buffer per parameter, same shape and memory layout,
            allocated once.
        buffer_names, buffers: the module's buffers (BatchNorm statistics ...),
            as detached aliases.
        output_structure: how the last forward's outputs nest
            (:class:`OutputStructure`), ``None`` before the first forward.
        autocast: the dtype forwards autocast to (``torch.bfloat16``), or ``None``.
        lock: a re-entrant lock. ``forward`` and the pullback take it; hold it
            yourself around a whole step when threads share one model.
    """

    # whether the parameters and their gradient buffers are shared once, at
    # bridging (a functional model takes its parameters per call instead)
    _shares_gradients = True

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        input_shapes=None,
        distributed: bool = True,
        autocast: str | torch.dtype | None = None,
    ):
        if not isinstance(module, torch.nn.Module):
            raise NotAModuleError(not_a_module_message("bridge", module))
        # first: it may warn (or, with the warning made an error, refuse) before anything is held
        text = TextInputs.of(module)
        self.autocast: torch.dtype | None = _checked_autocast(module, autocast)
        self.module = module
        self.lock = threading.RLock()
        self._closed = False
        self._input_shapes = (
            None
            if input_shapes is None
            else [None if s is None else tuple(s) for s in input_shapes]
        )
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.param_names: tuple[str, ...] = tuple(n for n, _ in named)
        self._parameters: tuple[torch.nn.Parameter, ...] = tuple(p for _, p in named)
        self.params: tuple[torch.Tensor, ...] = tuple(p.detach() for p in self._parameters)
        with torch.no_grad():
            self.grads: tuple[torch.Tensor, ...] = tuple(
                torch.zeros_like(p, memory_format=torch.preserve_format)
                for p in (self._parameters if self._shares_gradients else ())
            )
        self._grad_list = list(self.grads)
        for p, g in zip(self._parameters, self.grads):
            p.grad = g
        try:
            self._ddp = _ddp_wrap(module) if distributed and self._shares_gradients else None
        except BaseException:
            for p in self._parameters:
                p.grad = None
            raise
        named_buffers = list(module.named_buffers())
        self.buffer_names: tuple[str, ...] = tuple(n for n, _ in named_buffers)
        self.buffers: tuple[torch.Tensor, ...] = tuple(b.detach() for _, b in named_buffers)
        self.output_structure: OutputStructure | None = None
        self._device = module_device(module)
        self._float_dtype = module_float_dtype(module)
        # a model of real parameters takes real inputs (NOTE [input dtypes])
        self._real = self._float_dtype is not None and not any(
            t.is_complex() for t in (*module.parameters(), *module.buffers())
        )
        self._text = text
        shared = [*self.params, *self.grads] if self._shares_gradients else []
        LEDGER.add_model(self, len(shared), tensor_bytes(shared))

    # -- state -------------------------------------------------------------
    @property
    def parameters(self) -> tuple[torch.nn.Parameter, ...]:
        """The trainable ``nn.Parameter`` objects in :attr:`param_names` order."""
        return self._parameters

    @property
    def ddp(self) -> torch.nn.Module | None:
        """The ``DistributedDataParallel`` wrapper forward runs through; ``None`` in one process."""
        return self._ddp

    @property
    def device(self) -> torch.device | None:
        """The device of the model's parameters (``None`` for a model without any)."""
        return self._device

    @property
    def dtype(self) -> torch.dtype | None:
        """The floating-point type of the model's parameters."""
        return self._float_dtype

    @property
    def training(self) -> bool:
        return self.module.training

    @property
    def closed(self) -> bool:
        return self._closed

    def train(self, mode: bool = True) -> BridgedModel:
        """train(mode=True) -> self: BatchNorm uses batch statistics, dropout is active."""
        self._check_open("train")
        self.module.train(mode)
        return self

    def eval(self) -> BridgedModel:
        """eval() -> self: BatchNorm uses running statistics, dropout is off."""
        return self.train(False)

    def attach_grads(self) -> None:
        """attach_grads() -> None: make each parameter's ``.grad`` its shared buffer again.

        Anything that may have replaced ``p.grad`` (``zero_grad(set_to_none=True)``,
        an optimiser of the user's) is undone before every step that fills or
        reads the buffers (NOTE [gradient buffers]).
        """
        for p, g in zip(self._parameters, self._grad_list):
            if p.grad is not g:
                p.grad = g

    def zero_grad(self) -> None:
        """zero_grad() -> None: set every gradient buffer to zero, in place."""
        self._check_open("zero_grad")
        if self.grads:
            with torch.no_grad():
                _zero_all(self._grad_list)

    def close(self) -> None:
        """close() -> None

        Release every live pullback of this model, detach the gradient buffers
        from the parameters and stop sharing them. Idempotent. The module
        itself stays usable from torch.
        """
        with self.lock:
            if self._closed:
                return
            twin = getattr(self, "_functional_twin", None)  # torchbridge.functional
            for pullback in LEDGER.live_pullbacks():
                if pullback.model is self or (twin is not None and pullback.model is twin):
                    pullback.release()
            if twin is not None:
                twin._closed = True
            for p, g in zip(self._parameters, self.grads):
                if p.grad is g:
                    p.grad = None
            self._ddp = None
            self._closed = True
            LEDGER.remove_model(self)

    def __enter__(self) -> BridgedModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("train" if self.training else "eval")
        return (
            f"BridgedModel({type(self.module).__name__}, {len(self.params)} params, "
            f"{sum(p.numel() for p in self.params):,} values, {state})"
        )

    # -- the step ----------------------------------------------------------
    def __call__(
        self, *inputs, grad: bool = True, input_grads: bool | Sequence[bool] = True, **kw_inputs
    ):
        return self.forward(*inputs, grad=grad, input_grads=input_grads, **kw_inputs)

    def forward(
        self,
        *inputs,
        grad: bool = True,
        input_grads: bool | Sequence[bool] | Mapping[str | int, bool] = True,
        **kw_inputs,
    ):
        """forward(*inputs, grad=True, input_grads=True, **kw_inputs) -> (outputs, pullback)

        Run the module on views of ``inputs`` and ``kw_inputs`` (any DLPack
        producers; never copied) and return its outputs as a tuple of tensors
        (see :attr:`output_structure` to name them or rebuild a tuple, dict,
        dataclass or ``ModelOutput``) together with a :class:`Pullback` that
        owns the graph. With ``grad=False`` no graph is built and ``pullback``
        is ``None``.

        ``input_grads`` says which inputs want a gradient: one bool for all,
        one per positional input (keyword inputs then want one), or a mapping
        from positions and keyword names to bools (those not named want one).
        ``False`` skips that work for data batches. Only floating-point (and
        complex) inputs are ever differentiated; token ids and masks cross as
        they are (NOTE [keyword inputs]). ``True`` for all skips them; naming
        one of them as wanting a gradient is an
        :class:`~torchbridge.errors.InputGradsError`, as is any other form of
        ``input_grads``.
        """
        self._check_open("forward")
        npos = len(inputs)
        # the flags' form is checked before any array is viewed
        wants, asked = _per_input(input_grads, npos, tuple(kw_inputs))
        values, names = self.checked_inputs(*inputs, **kw_inputs)
        del kw_inputs
        if not grad:
            with self.lock, torch.no_grad():
                out = self._run(values, npos, names)
            flat, structure = flatten_outputs(out)
            self.output_structure = structure
            return tuple(self.returned(flat)), None
        problem = _without_gradient(values, asked, npos, names) if asked else None
        if problem is not None:
            values.clear()  # the views go now, not when the traceback dies
            raise InputGradsError(problem)
        leaves = _leaves(values, wants)
        del values
        with self.lock:
            if torch.is_grad_enabled():
                out = self._run(leaves, npos, names)
            else:
                with torch.enable_grad():
                    out = self._run(leaves, npos, names)
        flat, structure = flatten_outputs(out)
        del out
        flat = self.returned(flat)
        self.output_structure = structure
        pullback = Pullback(self, leaves, flat, structure, (*range(npos), *names))
        return tuple(o.detach() for o in flat), pullback

    def checked_inputs(self, *inputs: Any, **kw_inputs: Any) -> tuple[list, tuple[str, ...]]:
        """checked_inputs(*inputs, **kw_inputs) -> (values, names)

        The views :meth:`forward` runs the module on: positional inputs, then
        keyword ones (``names``), arrays viewed without a copy, after the
        checks of dtype, device, shape and token ids that ``forward`` makes
        (raising its typed errors).
        """
        names = tuple(kw_inputs)
        values: list = []
        npos = len(inputs)
        try:
            for x in inputs:
                values.append(to_torch(x))
            for n, v in kw_inputs.items():
                values.append(_keyword_value(n, v))
            self._check_inputs(values, npos, names)
            if self._text is not None:
                self._text.check(values, npos, names)
        except BaseException as exc:
            # A refused call leaves nothing allocated: the views of the foreign
            # arrays go now, not when the caller drops the exception's traceback.
            values.clear()
            traceback.clear_frames(exc.__traceback__)
            raise
        return values, names

    def returned(self, outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """returned(outputs) -> list: flat outputs as the caller receives them.

        Under autocast, floating-point outputs in another dtype than the
        parameters' are cast to it (differentiably; NOTE [autocast at the
        bridge]); otherwise they are returned as they are.
        """
        if self.autocast is None or self._float_dtype is None:
            return outputs if isinstance(outputs, list) else list(outputs)
        want = self._float_dtype
        return [o.to(want) if o.is_floating_point() and o.dtype != want else o for o in outputs]

    def _run(self, values: list, npos: int = -1, names: tuple[str, ...] = (), call=None) -> Any:
        # a differentiated forward runs through DDP (NOTE [bridged models under DDP]);
        # `call` replaces the module (a functional call of it)
        run = call or (
            self._ddp if self._ddp is not None and torch.is_grad_enabled() else self.module
        )
        try:
            if self.autocast is not None:
                device = "cpu" if self._device is None else self._device.type
                with torch.autocast(device, dtype=self.autocast):
                    return self._call(run, values, npos, names)
            return self._call(run, values, npos, names)
        except Exception as exc:
            # The failing frames hold the input views; clear them so the
            # foreign buffers are released now, not when the traceback dies.
            shapes = [t.shape for t in values if isinstance(t, torch.Tensor)]
            values.clear()
            traceback.clear_frames(exc.__traceback__)
            failure = None if self._ddp is None else rank_failure(exc, "forward")
            if failure is not None:
                raise failure from exc
            if is_shape_error(exc):
                raise InputShapeError(self._shape_message(shapes, str(exc))) from exc
            raise

    @staticmethod
    def _call(run, values: list, npos: int, names: tuple[str, ...]) -> Any:
        if not names:
            return run(*values)
        return run(*values[:npos], **dict(zip(names, values[npos:])))

    def _shape_message(self, shapes, detail: str) -> str:
        got = ", ".join(f"torch {tuple(s)} / Julia {julia_shape(s)}" for s in shapes)
        expected = ""
        if self._input_shapes:
            expected = (
                " Expected "
                + ", ".join(
                    "torch "
                    + _spec_str(s)
                    + " / Julia "
                    + _spec_str(None if s is None else s[::-1])
                    for s in self._input_shapes
                )
                + "."
            )
        return (
            f"forward: the inputs do not fit {type(self.module).__name__}: got {got}.{expected} "
            f"torch said: {detail.splitlines()[0] if detail else '?'}. Julia dimensions are the "
            "reverse of torch's: a Julia (W, H, C, N) image batch is torch (N, C, H, W), a "
            "Julia (features, batch) matrix is torch (batch, features)."
        )

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ModelClosedError(
                f"{what}: this BridgedModel was closed; bridge the module again with "
                "torchbridge.bridge(module) to keep using it."
            )

    def _check_inputs(self, values: list, npos: int | None = None, names: tuple = ()) -> None:
        npos = len(values) if npos is None else npos
        device = self._device
        on_cpu = device is not None and device.type == "cpu"
        for i, t in enumerate(values):
            if not isinstance(t, torch.Tensor):
                continue
            # t.is_cpu first: t.device builds a new torch.device on every read
            if device is not None and not (on_cpu and t.is_cpu) and t.device != device:
                raise DeviceMismatchError(
                    f"forward: input {_input_label(i, npos, names)} is a {describe_array(t)}, "
                    f"but the model is on "
                    f"{self._device}. Move the array to {self._device} (a CuArray for "
                    "cuda, an Array for cpu) or the model with model.module.to(device)."
                )
            if self._real and t.is_complex():
                raise DTypeMismatchError(
                    f"forward: input {_input_label(i, npos, names)} is a {describe_array(t)}, "
                    f"but the model's parameters are real {self._float_dtype} "
                    f"({julia_eltype(self._float_dtype)}): a complex input would fail deep inside "
                    f"it. Pass the real values the model was trained on (e.g. abs(x), real(x), "
                    f"or real and imaginary parts as channels), as "
                    f"{julia_eltype(self._float_dtype)}."
                )
            if (
                self._float_dtype is not None
                and t.is_floating_point()
                and t.dtype != self._float_dtype
            ):
                raise DTypeMismatchError(
                    f"forward: input {_input_label(i, npos, names)} is a {describe_array(t)}, "
                    "but the model computes in "
                    f"{self._float_dtype} ({julia_eltype(self._float_dtype)}). Convert the "
                    f"input (Julia: {julia_eltype(self._float_dtype)}.(x); numpy: "
                    f"x.astype(...)) or the model (model.module.to({self._float_dtype!s}))."
                )
        if self._input_shapes is None:
            return
        tensors = values[:npos]
        if len(tensors) != len(self._input_shapes):
            raise InputShapeError(
                f"forward: the model takes {len(self._input_shapes)} input(s), got {len(tensors)}."
            )
        for t, spec in zip(tensors, self._input_shapes):
            if spec is None:
                continue
            if t.dim() != len(spec) or any(
                want is not None and want != have for want, have in zip(spec, t.shape)
            ):
                raise InputShapeError(self._shape_message([t.shape for t in tensors], ""))


class Pullback:
    """Pullback: the reverse pass of one forward; it owns that forward's graph.

    ``pullback(*cotangents, accumulate=False) -> input_grads`` computes the
    gradients with respect to the inputs (returned, ``None`` for an input that
    is not differentiated) and to every parameter (written into the model's
    ``grads``: overwritten, or added with ``accumulate=True``), then frees the
    graph. A ``None`` cotangent means zero. Calling it a second time, or after
    :meth:`release`, raises :class:`~torchbridge.errors.PullbackReleasedError`
    — except for a pullback created inside ``memory.scope(reusable=True)``,
    which may be called again until its scope ends (NOTE [reusable pullbacks]
    in :mod:`torchbridge.memory`).

    A cotangent that does not fit its output raises
    :class:`~torchbridge.errors.CotangentError` and leaves the pullback live, so
    the caller may retry or :meth:`release` it.
    """

    __slots__ = (
        "_model",
        "_inputs",
        "_outputs",
        "output_structure",
        "input_names",
        "_state",
        "reusable",
        "__weakref__",
    )

    def __init__(
        self, model: BridgedModel, inputs: list, outputs: list, structure, names: tuple = ()
    ):
        self._model = model
        self._inputs = inputs
        self._outputs = outputs
        self.output_structure: OutputStructure = structure
        #: what each input gradient belongs to: positions, then keyword names
        self.input_names: tuple[int | str, ...] = names or tuple(range(len(inputs)))
        self._state = "live"
        self.reusable: bool = LEDGER.add_pullback(self)

    def held_tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors this pullback keeps alive: the imported inputs and the graph outputs."""
        return (*(t for t in self._inputs if isinstance(t, torch.Tensor)), *self._outputs)

    @property
    def live(self) -> bool:
        """True until the pullback has run or been released."""
        return self._state == "live"

    @property
    def model(self) -> BridgedModel:
        return self._model

    def __call__(self, *cotangents, accumulate: bool = False, **named):
        # The model's lock guards this pullback's state as well as the shared
        # gradient buffers: one lock, taken once per call.
        with self._model.lock:
            self._check_live()
            outputs = self._outputs
            if len(cotangents) == 1 and isinstance(cotangents[0], Mapping) and not named:
                named, cotangents = dict(cotangents[0]), ()
            if named:
                cotangents = self._by_name(cotangents, named)
            if len(cotangents) != len(outputs):
                raise CotangentError(
                    f"pullback: expected {len(outputs)} cotangent(s), one per output "
                    f"({self.output_structure}), got {len(cotangents)}. Pass None for an "
                    "output that does not contribute."
                )
            pairs = [
                (out, _check_cotangent(i, out, cot))
                for i, (out, cot) in enumerate(zip(outputs, cotangents))
                if cot is not None and out.requires_grad
            ]
            if self.reusable:
                return self._backward(pairs, accumulate, retain=True)
            try:
                return self._backward(pairs, accumulate, retain=False)
            finally:
                self._free("called")

    def _by_name(self, positional: tuple, named: dict) -> tuple:
        # Cotangents for some outputs, by name: every other output's is zero,
        # and a zero costs nothing (it is not part of the backward).
        if positional:
            raise CotangentError(
                "pullback: pass cotangents either positionally (one per output) or by output "
                "name, not both."
            )
        structure = self.output_structure
        chosen: list[Any] = [None] * len(self._outputs)
        for name, cot in named.items():
            try:
                chosen[structure.index(name)] = cot
            except KeyError:
                raise CotangentError(
                    f"pullback: no output named {name!r}; the outputs are {list(structure.names)}."
                ) from None
        return tuple(chosen)

    def _backward(self, pairs, accumulate: bool, *, retain: bool):
        model = self._model
        inputs = self._inputs
        params = model._parameters
        grads = model._grad_list
        model.attach_grads()
        if grads and not accumulate:
            _zero_all(grads)
        diff_inputs = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        if retain:  # each call of a reusable pullback returns its own input gradients
            for t in diff_inputs:
                t.grad = None
        if pairs and (params or diff_inputs):
            # No `inputs=`: restricting the engine to a list of leaves costs ~3%
            # on a ResNet. Every leaf the forward reached accumulates, as in
            # plain PyTorch training (see NOTE [gradient buffers]).
            try:
                _run_backward([o for o, _ in pairs], [c for _, c in pairs], retain)
            except RuntimeError as exc:
                failure = None if model._ddp is None else rank_failure(exc, "pullback")
                if failure is None:
                    raise
                raise failure from exc
        if not diff_inputs:
            return (None,) * len(inputs)
        result = []
        for t in inputs:
            if not isinstance(t, torch.Tensor) or not t.requires_grad:
                result.append(None)
                continue
            g = t.grad
            result.append(torch.zeros_like(t) if g is None else g)
        return tuple(result)

    def release(self) -> bool:
        """release() -> bool

        Free the graph without computing anything. Idempotent: returns True
        when this call released it, False when it was already gone.
        """
        with self._model.lock:
            if self._state != "live":
                return False
            self._free("released")
            return True

    def _free(self, state: str, *, by_gc: bool = False) -> None:
        self._state = state
        self._inputs = []
        self._outputs = []
        LEDGER.remove_pullback(self, by_gc=by_gc)

    def _check_live(self) -> None:
        if self._state == "called":
            raise PullbackReleasedError(
                "pullback: this pullback already ran and its graph is freed; a pullback is "
                "one-shot. Run forward again for another gradient, or create it inside "
                "torchbridge.memory.scope(reusable=True) (Julia: TorchBridge.scope(f; "
                "reusable = true)) to call it several times; the scope frees it at its end."
            )
        if self._state == "released":
            raise PullbackReleasedError(
                "pullback: this pullback was released (by release(), the end of a memory "
                "scope, or closing the model) and its graph is freed. Run forward again."
            )

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "live":
            self._free("released", by_gc=True)

    def __repr__(self) -> str:
        return f"Pullback({self._state}, {self.output_structure})"


# torch.autograd.backward re-validates every cotangent (_make_grads) before it
# calls the engine; the bridge has already checked shape, dtype and device
# (_check_cotangent), and that check is most of the Python cost of a small
# step. Plain tensors go straight to the engine entry torch.autograd.backward
# itself uses; anything else (tensor subclasses, a torch without that entry)
# takes the public function.
_engine_run_backward = getattr(torch.autograd.graph, "_engine_run_backward", None)


def _run_backward(outputs: list, cotangents: list, retain: bool) -> None:
    if _engine_run_backward is not None and all(
        type(t) is torch.Tensor for t in (*outputs, *cotangents)
    ):
        _engine_run_backward(
            tuple(outputs),
            tuple(cotangents),
            retain,
            False,
            (),
            allow_unreachable=True,
            accumulate_grad=True,
        )
    else:
        torch.autograd.backward(outputs, cotangents, retain_graph=retain)


def _checked_autocast(module: torch.nn.Module, autocast: Any) -> torch.dtype | None:
    """The autocast dtype for ``module``: NOTE [autocast at the bridge]."""
    dtype = autocast_dtype(autocast, module_device(module), what="bridge: autocast")
    held = module_float_dtype(module)
    if dtype is not None and held is not None and held in (torch.bfloat16, torch.float16):
        raise PrecisionError(
            f"bridge: autocast={autocast!r} is for a float32 model, and "
            f"{type(module).__name__} already holds {held} weights, which compute in {held} "
            "without it; pass autocast=None."
        )
    return dtype


def _leaves(values: list, wants: list[bool]) -> list:
    # A helper, not a loop in forward: a loop variable would keep the last
    # input alive in forward's frame if the module raised.
    # Every input is cut from any graph of the caller's: the bridge is a boundary.
    return [
        t
        if not isinstance(t, torch.Tensor)
        else t.detach().requires_grad_(True)
        if want and (t.is_floating_point() or t.is_complex())
        else (t.detach() if t.requires_grad else t)
        for t, want in zip(values, wants)
    ]


_PLAIN_KEYWORDS = (type(None), bool, int, float, str)


def _keyword_value(name: str, value: Any) -> Any:
    """A keyword input: an array as a view (NOTE [keyword inputs]); a plain value as it is."""
    if isinstance(value, _PLAIN_KEYWORDS):
        return value
    try:
        return to_torch(value)
    except UnsupportedArrayError as exc:
        raise UnsupportedArrayError(f"forward: keyword input {name}=: {exc}") from exc


def _input_label(i: int, npos: int, names: tuple = ()) -> str:
    """How messages name input ``i``: its position, or ``name=`` for a keyword input."""
    return str(i) if i < npos or i - npos >= len(names) else f"{names[i - npos]}="


def _is_flag(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


_INPUT_GRADS_FORMS = (
    "True/False for every input, one bool per positional input ([True, False]), or a mapping "
    "of positions and keyword names to bools ({0: False, 'inputs_embeds': True})"
)


def _per_input(
    flag: bool | Sequence[bool] | Mapping[str | int, bool], n: int, names: tuple[str, ...] = ()
) -> tuple[list[bool], tuple[int, ...]]:
    """One bool per input (positional, then keyword), and the inputs named as wanting a
    gradient: every True of a sequence or a mapping, none for one bool."""
    if _is_flag(flag):
        return [bool(flag)] * (n + len(names)), ()
    if isinstance(flag, Mapping):
        known = {*range(n), *names}
        unknown = [k for k in flag if k not in known]
        if unknown:
            raise InputGradsError(
                f"forward: input_grads names {unknown}, which are not inputs of this call "
                f"(positions 0..{n - 1}, keywords {list(names)})."
            )
        odd = {k: v for k, v in flag.items() if not _is_flag(v)}
        if odd:
            raise InputGradsError(
                f"forward: input_grads maps inputs to bools, got {odd!r}. It takes "
                f"{_INPUT_GRADS_FORMS}."
            )
        keys = (*range(n), *names)
        wants = [bool(flag.get(k, True)) for k in keys]
        return wants, tuple(i for i, k in enumerate(keys) if flag.get(k) is not None and wants[i])
    if isinstance(flag, (str, bytes)) or not isinstance(flag, Iterable):
        raise InputGradsError(
            f"forward: input_grads takes {_INPUT_GRADS_FORMS}; got {type(flag).__name__} {flag!r}."
        )
    flags = list(flag)
    odd = [f for f in flags if not _is_flag(f)]
    if odd:
        raise InputGradsError(
            f"forward: input_grads has entries that are not bools: {odd!r}. It takes "
            f"{_INPUT_GRADS_FORMS}."
        )
    if len(flags) != n:
        raise InputGradsError(
            f"forward: input_grads has {len(flags)} entries for {n} positional input(s); give "
            "one bool per positional input, or a mapping to name keyword inputs."
        )
    return [bool(f) for f in flags] + [True] * len(names), tuple(
        i for i, f in enumerate(flags) if f
    )


def _without_gradient(values: list, asked: tuple[int, ...], npos: int, names: tuple) -> str | None:
    """The message for the first input named as wanting a gradient that has none, else None."""
    for i in asked:
        t = values[i]
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            continue
        what = describe_array(t) if isinstance(t, torch.Tensor) else f"{type(t).__name__} {t!r}"
        return (
            f"forward: input_grads asks for the gradient of input {_input_label(i, npos, names)}, "
            f"a {what}, which has none: only floating-point and complex arrays are "
            "differentiated (token ids and masks never are). Set it to False, or pass "
            "input_grads=True, which differentiates every floating-point input and skips the rest."
        )
    return None


def _check_cotangent(i: int, out: torch.Tensor, cot: Any) -> torch.Tensor:
    try:
        c = to_torch(cot)
    except UnsupportedArrayError as exc:
        raise CotangentError(f"pullback: cotangent {i} is not an array: {exc}") from exc
    except UnsupportedDTypeError as exc:
        raise CotangentError(
            f"pullback: cotangent {i} cannot cross: {exc} Output {i} is {out.dtype} "
            f"({julia_eltype(out.dtype)}); a cotangent has its output's type."
        ) from exc
    if c.shape != out.shape:
        raise CotangentError(
            f"pullback: cotangent {i} has torch shape {tuple(c.shape)} (Julia size "
            f"{julia_shape(c.shape)}), but output {i} has torch shape {tuple(out.shape)} "
            f"(Julia size {julia_shape(out.shape)}). A cotangent has its output's shape."
        )
    if c.dtype != out.dtype:
        raise CotangentError(
            f"pullback: cotangent {i} is {c.dtype} ({julia_eltype(c.dtype)}) but output {i} is "
            f"{out.dtype} ({julia_eltype(out.dtype)}); convert the cotangent."
        )
    if c.device != out.device:
        raise CotangentError(
            f"pullback: cotangent {i} is on {c.device} but output {i} is on {out.device}."
        )
    return c


def _spec_str(spec) -> str:
    if spec is None:
        return "(any)"
    return "(" + ", ".join("*" if d is None else str(d) for d in spec) + ")"
