"""The step: wrap a model once, forward, pullback, results into Julia-owned arrays.

NOTE [results cross to a Julia owner]
Nothing torch allocates is handed to Julia by reference. A forward or a
pullback returns its tensors together with their *layouts*
(:func:`torchbridge.exchange.julia_layout`: Julia size, element type, device)
and their *addresses* (:func:`addresses`: where a CPU tensor's memory holds
its values as they read, ``None`` for any other). Julia allocates arrays of
those sizes and fills them: from the address, with a plain memory copy made
while it still holds the tensor (no second round trip, no DLPack share); or,
for the others (CUDA tensors, a non-contiguous input gradient), by sharing
the arrays and calling :func:`copy_out`. Julia then drops its handles to the
torch tensors at once, so no torch memory waits for Julia's garbage collector
(the DLPack.jl #26 leak).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..bridged import BridgedModel, Pullback, bridged_model
from ..errors import NotAPullbackError, UnsupportedArrayError
from ..exchange import copy_into, julia_layout, julia_shape

__all__ = [
    "Layout",
    "addresses",
    "copy_out",
    "forward",
    "forward_into",
    "layouts",
    "model_state",
    "output_sizes",
    "pullback",
    "receivable",
    "release",
    "settle",
    "synchronize",
]

Layout = tuple[tuple[int, ...], str, str, int]

_CPU = torch.device("cpu")  # compared before reading a device's .type, which torch formats anew


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
    model = bridged_model(model, "model_state")
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
    device = model.device or torch.device("cpu")
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
    model: BridgedModel,
    *inputs: Any,
    grad: bool = True,
    input_grads: bool | Sequence[bool] = True,
    **kw_inputs: Any,
) -> tuple[tuple[torch.Tensor, ...], Pullback | None, tuple[Layout, ...]]:
    """forward(model, *inputs, grad=True, input_grads=True, **kw_inputs) -> (outputs, pullback,
    layouts)

    :meth:`BridgedModel.forward` plus the layouts Julia needs to allocate the
    receiving arrays (see NOTE [results cross to a Julia owner]). Keyword
    inputs (``input_ids=``, ``attention_mask=``) pass through; the outputs'
    names are ``model.output_structure.names``.
    """
    model = bridged_model(model, "forward")
    outputs, pullback = model.forward(*inputs, grad=grad, input_grads=input_grads, **kw_inputs)
    return outputs, pullback, layouts(outputs)


def forward_into(
    model: BridgedModel,
    expected: tuple[Layout, ...] | None,
    inputs: Sequence[Any],
    kw_inputs: Mapping[str, Any] | None = None,
    grad: bool = True,
    input_grads: bool | Sequence[bool] = True,
) -> tuple[
    tuple[torch.Tensor, ...],
    Pullback | None,
    tuple[Layout, ...] | None,
    tuple[int | None, ...],
]:
    """forward_into(model, expected, inputs, kw_inputs=None, grad=True, input_grads=True)
    -> (outputs, pullback, layouts, addresses)

    :func:`forward` in the form of Julia's hot path: positional ``inputs`` as
    one sequence and keyword inputs as one mapping (or ``None``), so the
    caller's call has the same shape every step. ``layouts`` is ``None`` when
    the outputs' layouts equal ``expected`` (the layouts an earlier call
    returned, which the caller keeps), so a caller that already allocates from
    them converts nothing; otherwise the layouts. ``addresses`` is
    :func:`addresses` of the outputs; a CPU output whose memory does not hold
    its values as they read (not C-contiguous, or a lazily conjugated or
    negated view) is returned as a plain copy so that it has one (NOTE
    [results cross to a Julia owner]); CUDA outputs have none and are received
    with :func:`copy_out`, which waits for torch's stream. If anything fails
    after the module ran, the pullback is released before the error propagates.
    """
    model = bridged_model(model, "forward_into")
    outputs, pullback = model.forward(
        *inputs, grad=grad, input_grads=input_grads, **(kw_inputs or {})
    )
    try:
        received, found, where = receivable(model, outputs)
    except BaseException:
        if pullback is not None:
            pullback.release()
        raise
    return received, pullback, None if found == expected else found, where


def receivable(
    model: BridgedModel, outputs: Sequence[torch.Tensor]
) -> tuple[tuple[torch.Tensor, ...], tuple[Layout, ...], tuple[int | None, ...]]:
    """receivable(model, outputs) -> (outputs, layouts, addresses)

    ``model``'s outputs as Julia receives them (NOTE [results cross to a Julia
    owner]): each CPU output whose memory does not hold its values as they read
    (not C-contiguous, or a lazily conjugated or negated view) replaced by a
    plain copy, with the layouts and :func:`addresses` of all of them. When any
    output is on the CPU, waits for a CUDA model's stream first: such an
    output may still be in flight.

    Raises:
        UnsupportedDTypeError: an output's dtype has no Julia element type.
    """
    # one pass per output: this runs on every step of a Julia training loop
    received, found, where = [], [], []
    cpu_out = False
    for o in outputs:
        cpu = o.is_cpu  # not o.device.type: torch formats that string on every read
        if cpu and not _plain(o):
            o = o.resolve_conj().resolve_neg().contiguous()
        cpu_out = cpu_out or cpu
        received.append(o)
        found.append(julia_layout(o))
        where.append(o.data_ptr() if cpu else None)
    if cpu_out:
        settle(model)
    return tuple(received), tuple(found), tuple(where)


def addresses(tensors: Sequence[torch.Tensor | None]) -> tuple[int | None, ...]:
    """addresses(tensors) -> tuple: the data address of each CPU tensor whose memory holds
    its values as they read (C-contiguous, not a lazily conjugated or negated view), else
    ``None``.

    The caller may copy ``numel * element_size`` bytes from an address into
    memory it owns while it holds the tensor (NOTE [results cross to a Julia
    owner]); the tensor's memory is torch's and is never written through it.
    """
    return tuple(
        t.data_ptr() if t is not None and t.is_cpu and _plain(t) else None for t in tensors
    )


def _plain(t: torch.Tensor) -> bool:
    # conj() and _neg_view() are contiguous views whose memory holds the values
    # before the flag is applied: copied as bytes, they would read wrong
    return t.is_contiguous() and not t.is_conj() and not t.is_neg()


def output_sizes(
    model: BridgedModel, sizes: Sequence[Sequence[int]]
) -> tuple[tuple[tuple[int, ...], ...], tuple[str, ...] | None]:
    """output_sizes(model, sizes) -> (sizes, names)

    The Julia sizes of the model's outputs for inputs of Julia ``sizes``
    (each reversed into torch's order and back), computed on fake tensors
    without data or memory (:func:`torchbridge.shapes.output_shapes`), and the
    outputs' names when they are named (``None`` otherwise). What Flux's
    ``outputsize`` needs from a ``TorchModel``.
    """
    from ..shapes import output_shapes

    model = bridged_model(model, "output_sizes")
    shapes, structure = output_shapes(
        model.module, *(tuple(reversed(tuple(s))) for s in sizes), device=model.device
    )
    names = structure.names if structure.named else None
    return tuple(julia_shape(s) for s in shapes), names


def pullback(
    pullback: Pullback, *cotangents: Any, accumulate: bool = False
) -> tuple[tuple[torch.Tensor | None, ...], tuple[Layout | None, ...], tuple[int | None, ...]]:
    """pullback(pullback, *cotangents, accumulate=False) -> (input_grads, layouts, addresses)

    Runs ``pullback`` (parameter gradients land in the model's gradient
    buffers) and returns the input gradients with their layouts and
    :func:`addresses` (NOTE [results cross to a Julia owner]). On any error
    the pullback is released before the error propagates, so a failed step
    holds no graph. On a CUDA model, torch's stream is synchronised before
    returning: Julia reads the gradient buffers next, on its own stream, even
    when no input gradient is copied out.
    """
    _check_pullback(pullback, "pullback", stateful=True)
    try:
        grads = pullback(*cotangents, accumulate=accumulate)
    except BaseException:
        pullback.release()
        raise
    settle(pullback.model)
    return grads, layouts(grads), addresses(grads)


def release(pullback: Pullback | None) -> bool:
    """release(pullback) -> bool: free the pullback's graph without computing; idempotent."""
    if pullback is None:
        return False
    _check_pullback(pullback, "release")
    return pullback.release()


def _check_pullback(value: Any, what: str, *, stateful: bool = False) -> None:
    # NotAPullbackError unless `value` is a pullback (of a stateful model's forward, when
    # `stateful`; a functional call's goes to julia_support.functional_pullback)
    if type(value) is Pullback:  # every step's: one comparison
        return
    from ..functional import FunctionalPullback, SecondOrderPullback

    functional = isinstance(value, (FunctionalPullback, SecondOrderPullback))
    if isinstance(value, Pullback) and not (stateful and functional):
        return
    if functional:
        raise NotAPullbackError(
            f"{what}: this is a functional call's pullback; run it with "
            "julia_support.functional_pullback."
        )
    raise NotAPullbackError(
        f"{what}: expected a pullback (what forward returns), got {type(value).__name__}."
    )


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
    devices: set[torch.device] = set()
    for dest, t in zip(destinations, tensors, strict=True):
        if dest is None or t is None:
            continue
        copy_into(dest, t)
        if t.device.type == "cuda":
            devices.add(t.device)
    for device in devices:  # each device's own stream, not only the current device's
        torch.cuda.current_stream(device).synchronize()


def settle(model: BridgedModel) -> None:
    """settle(model) -> None: wait for torch's stream when the model is on CUDA.

    Called after torch wrote memory that Julia reads next (gradient buffers,
    parameters after an optimiser step): Julia's stream knows nothing of torch's.
    """
    device = model.device
    if device is not None and device != _CPU and device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def synchronize(device_index: int = -1) -> None:
    """synchronize(device_index=-1) -> None: wait for torch's current CUDA stream (no-op on CPU)."""
    if device_index >= 0 and torch.cuda.is_available():
        torch.cuda.current_stream(device_index).synchronize()
