"""Functional calls for Julia: Lux layers, DifferentiationInterface, forward mode.

The calls TorchBridge.jl makes for a ``TorchLayer`` (explicit parameters and
state) and for ForwardDiff's dual numbers, each one round trip
(NOTE [functional calls] and NOTE [forward mode and second order] in
:mod:`torchbridge.functional`). Results cross as NOTE [results cross to a
Julia owner] in :mod:`.step` says: tensors with their Julia layouts and
addresses, copied into Julia-owned arrays.

NOTE [dual numbers cross packed]
A Julia array of ForwardDiff duals with ``P`` partials, ``Dual{T,V,P}``, is
``P + 1`` values of ``V`` per element: the value, then the partials.
TorchBridge.jl shares it reinterpreted as an array of ``V`` of Julia size
``(P + 1, dims...)``, which torch sees as ``(*reversed(dims), P + 1)``: the
primal is ``t[..., 0]`` and the tangents ``t[..., 1:]`` moved to the front,
``(P, *reversed(dims))``; both views, no copy. Results cross back the same way,
packed into one contiguous ``(*shape, P + 1)`` tensor that Julia copies into
an array of duals. ``packed`` flags say which arrays of a call are packed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..bridged import BridgedModel, not_a_module_message
from ..errors import NotAModuleError, NotAPullbackError, ParameterMismatchError
from ..exchange import to_torch
from ..functional import FunctionalModel, FunctionalPullback, SecondOrderPullback
from .step import Layout, addresses, layouts, receivable, settle

__all__ = [
    "functional_apply",
    "functional_model",
    "functional_pullback",
    "functional_state",
]


def functional_model(model: Any) -> FunctionalModel:
    """functional_model(model) -> FunctionalModel

    A functional wrapper of ``model``: a new :class:`FunctionalModel` for a
    ``torch.nn.Module``, the model's twin for a :class:`BridgedModel` (what a
    ``TorchModel`` called on duals uses; :meth:`FunctionalModel.twin`), the
    model itself for a :class:`FunctionalModel`.
    """
    if isinstance(model, FunctionalModel):
        return model
    if isinstance(model, BridgedModel):
        return FunctionalModel.twin(model)
    if isinstance(model, torch.nn.Module):
        return FunctionalModel(model)
    raise NotAModuleError(not_a_module_message("functional_model", model))


def _functional(value: Any, what: str) -> FunctionalModel:
    # NotAModuleError unless `value` is what functional_model made
    if isinstance(value, FunctionalModel):
        return value
    raise NotAModuleError(
        not_a_module_message(
            what, value, "a FunctionalModel (julia_support.functional_model(module))"
        )
    )


def functional_state(model: FunctionalModel) -> dict[str, Any]:
    """functional_state(model) -> dict: what a Lux layer copies once, as its initial
    parameters and states.

    Keys: ``param_names``, ``params``, ``param_layouts``, ``param_addresses``,
    and the same four for ``buffer``; each tensor C-contiguous on the CPU (a
    copy where the module's is not) so Julia copies it from its address.
    """
    model = _functional(model, "functional_state")
    params = [_plain(t) for t in model.params]
    buffers = [_plain(t) for t in model.buffers]
    settle(model)
    return {
        "param_names": tuple(model.param_names),
        "params": tuple(params),
        "param_layouts": layouts(params),
        "param_addresses": addresses(params),
        "buffer_names": tuple(model.buffer_names),
        "buffers": tuple(buffers),
        "buffer_layouts": layouts(buffers),
        "buffer_addresses": addresses(buffers),
    }


def functional_apply(
    model: FunctionalModel,
    expected: tuple[Layout, ...] | None,
    params: Sequence[Any] | None,
    buffers: Sequence[Any] | None,
    inputs: Sequence[Any],
    kw_inputs: Mapping[str, Any] | None = None,
    grad: bool = True,
    training: bool | None = None,
    input_grads: bool | Sequence[bool] = True,
    packed: tuple[Sequence[bool], Sequence[bool]] | None = None,
) -> tuple:
    """functional_apply(model, expected, params, buffers, inputs, kw_inputs=None, grad=True,
    training=None, input_grads=True, packed=None)
    -> (outputs, pullback, layouts, addresses, buffers, buffer_layouts, buffer_addresses)

    :meth:`FunctionalModel.apply` in the form of Julia's calls: positional
    ``inputs`` as one sequence, keyword inputs as one mapping (or ``None``).
    ``packed`` is ``(param_flags, input_flags)``, one bool per parameter and
    per input (positional, then keyword), ``True`` for an array of duals
    (NOTE [dual numbers cross packed]); the outputs then cross packed as well.
    ``layouts`` is ``None`` when it equals ``expected``. ``buffers`` is the
    new state (``None`` in evaluation mode), its layouts and addresses with
    it. If anything fails after the module ran, the pullback is released.
    """
    model = _functional(model, "functional_apply")
    kw_inputs = dict(kw_inputs or {})
    tangents = None
    if packed is not None:
        params, inputs, kw_inputs, tangents = _unpack_call(model, params, inputs, kw_inputs, packed)
    result = model.apply(
        params,
        buffers,
        *inputs,
        grad=grad,
        training=training,
        input_grads=input_grads,
        tangents=tangents,
        **kw_inputs,
    )
    pullback = result.pullback
    try:
        outputs = result.outputs
        if result.tangents is not None:
            outputs = tuple(_pack(o, t) for o, t in zip(outputs, result.tangents))
        received, found, where = receivable(model, outputs)
        state = () if result.buffers is None else tuple(_plain(b) for b in result.buffers)
    except BaseException:
        if pullback is not None:
            pullback.release()
        raise
    return (
        received,
        pullback,
        None if found == expected else found,
        where,
        None if result.buffers is None else state,
        layouts(state),
        addresses(state),
    )


def functional_pullback(
    pullback: Any, cotangents: Sequence[Any], packed: Sequence[bool] | None = None
) -> tuple[tuple, tuple[Layout | None, ...], tuple[int | None, ...]]:
    """functional_pullback(pullback, cotangents, packed=None) -> (grads, layouts, addresses)

    Runs a functional pullback and returns the gradients, parameters first
    (``param_names`` order) then inputs, ``None`` where there is none, with
    their layouts and addresses. For a :class:`SecondOrderPullback`,
    ``packed`` flags the cotangents that are arrays of duals, and every
    gradient crosses packed with its tangents (NOTE [dual numbers cross
    packed]). On any error the pullback is released first.
    """
    if not isinstance(pullback, (FunctionalPullback, SecondOrderPullback)):
        raise NotAPullbackError(
            "functional_pullback: expected the pullback of a functional call "
            f"(functional_apply), got {type(pullback).__name__}."
        )
    try:
        if isinstance(pullback, SecondOrderPullback):
            cots, ctans = [], []
            for c, is_packed in zip(cotangents, packed or (False,) * len(cotangents)):
                primal, tangent = _unpack(to_torch(c)) if is_packed and c is not None else (c, None)
                cots.append(primal)
                ctans.append(tangent)
            pgrads, igrads, ptans, itans = pullback(cots, ctans)
            grads = tuple(
                None if g is None and t is None else _pack(g, t)
                for g, t in zip((*pgrads, *igrads), (*ptans, *itans))
            )
        else:
            pgrads, igrads = pullback(*cotangents)
            grads = tuple(None if g is None else _plain(g) for g in (*pgrads, *igrads))
    except BaseException:
        pullback.release()
        raise
    settle(pullback.model)
    return grads, layouts(grads), addresses(grads)


# -- packing --------------------------------------------------------------------


def _unpack(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # torch (*shape, P + 1) -> the primal (*shape) and the tangents (P, *shape), views
    if t.dim() == 0 or t.shape[-1] < 2:
        raise ParameterMismatchError(
            f"functional call: a packed array of duals has torch shape {tuple(t.shape)}; its "
            "last torch dimension (Julia's first) holds the value and at least one partial."
        )
    return t[..., 0], t[..., 1:].movedim(-1, 0)


def _pack(primal: torch.Tensor | None, tangents: torch.Tensor | None) -> torch.Tensor:
    # the primal (*shape) and the tangents (P, *shape), either may be None (zero), as
    # one contiguous (*shape, P + 1) tensor
    if primal is None:
        primal = torch.zeros_like(tangents[0])
    if tangents is None:
        raise ParameterMismatchError("functional call: a packed result has no tangents.")
    return torch.cat((primal.unsqueeze(-1), tangents.movedim(0, -1)), dim=-1)


def _unpack_call(model, params, inputs, kw_inputs, packed):
    pflags, iflags = packed
    names = list(kw_inputs)
    values = [*inputs, *kw_inputs.values()]
    if (params is not None and len(pflags) != len(params)) or len(iflags) != len(values):
        raise ParameterMismatchError(
            f"functional call: packed flags for {len(pflags)} parameters and {len(iflags)} inputs, "
            f"for {'the module' if params is None else len(params)} parameters and "
            f"{len(values)} inputs."
        )
    ptan = None
    if params is not None:
        params = list(params)
        ptan = [None] * len(params)
        for i, flag in enumerate(pflags):
            if flag:
                params[i], ptan[i] = _unpack(to_torch(params[i]))
    itan = [None] * len(values)
    for i, flag in enumerate(iflags):
        if flag:
            values[i], itan[i] = _unpack(to_torch(values[i]))
    npos = len(inputs)
    return params, values[:npos], dict(zip(names, values[npos:])), (ptan, itan)


def _plain(t: torch.Tensor) -> torch.Tensor:
    # a tensor whose memory holds its values as they read, so Julia copies it from its address
    if t.is_cpu and (not t.is_contiguous() or t.is_conj() or t.is_neg()):
        return t.resolve_conj().resolve_neg().contiguous()
    return t
