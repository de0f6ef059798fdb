"""Functional calls: a torch module run on parameters and buffers passed per call.

NOTE [functional calls]
A :class:`~torchbridge.BridgedModel` is stateful: the module's own parameters
are shared once and updated in place. A :class:`FunctionalModel` is the other
way to hold them, what Lux.jl, DifferentiationInterface.jl and anything that
passes parameters per call need: each call brings every trainable parameter
(``param_names`` order) and every buffer (``buffer_names`` order) as arrays of
the caller, and the module runs on views of them
(``torch.func.functional_call``). The module's own tensors are neither read
nor written.

* Parameters and inputs are viewed without a copy where their memory allows
  (:func:`~torchbridge.exchange.to_torch`, read-only memory copied once); a
  parameter of another shape, element type or device than the module's is
  refused before the module runs.
* Buffers: in training mode a module may update buffers in place (BatchNorm's
  running statistics), so the call runs on copies of them and returns every
  copy as the new state;
  the caller's arrays are never written. In evaluation mode they are viewed as
  they are and no new state is returned.
* ``training=True``/``False`` sets the module's mode for the call (it stays
  so afterwards); ``None`` keeps it.
* The :class:`FunctionalPullback` returns the gradients of the parameters and
  of the inputs as new tensors (``None`` for one that no output reached) and
  writes nothing into the module. It is one-shot like every pullback and owns
  its graph (NOTE [ownership] in :mod:`torchbridge.memory`).

NOTE [forward mode and second order]
Tangents carry ``P`` directions at once: each is a tensor of shape
``(P, *primal.shape)``, or ``None`` for a zero tangent. A call with tangents
and ``grad=False`` returns the outputs' tangents, shape ``(P, *output.shape)``
(a Jacobian-vector product per direction): ``torch.func.jvp``, batched over the
directions with ``torch.func.vmap`` when the call writes no buffer. A call that
writes buffers (training mode with BatchNorm) uses forward-mode dual tensors
(``torch.autograd.forward_ad``) one direction at a time instead, since
torch.func refuses in-place updates of captured tensors (NOTE [plain autograd,
not torch.func] in :mod:`torchbridge.bridged`); vmap falls back to the same
loop for an operator without a batching rule.

With ``grad=True`` as well, the pullback is a :class:`SecondOrderPullback`:
given the cotangents and *their* tangents it returns the gradients and the
gradients' tangents, the derivative of the vector-Jacobian product along the
directions (forward over reverse; a Hessian-vector product when the output is
a scalar loss). It recomputes the forward under dual tensors, one direction at
a time, and ``torch.autograd.grad`` propagates the tangents through the
backward pass.

Every run of the forward after the first (the other directions, a
recompute) differentiates the same function as the first: it replays the
random generators' states the call started with (dropout draws the same
mask) and, when the call writes buffers, starts from the buffers as they were
before the call (NOTE [the same function every run]).
"""

from __future__ import annotations

import contextlib
import functools
import traceback
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.autograd.forward_ad as fwAD

from .bridged import (
    BridgedModel,
    Pullback,
    _check_cotangent,
    _leaves,
    _per_input,
    _run_backward,
    _without_gradient,
)
from .errors import (
    CotangentError,
    DeviceMismatchError,
    DTypeMismatchError,
    InputGradsError,
    ParameterMismatchError,
)
from .exchange import describe_array, julia_shape, to_torch
from .memory import LEDGER
from .outputs import OutputStructure, flatten_outputs

__all__ = [
    "FunctionalModel",
    "FunctionalPullback",
    "FunctionalResult",
    "SecondOrderPullback",
]


class FunctionalResult(NamedTuple):
    """What :meth:`FunctionalModel.apply` returns.

    Attributes:
        outputs: the outputs, flattened (``model.output_structure`` names them).
        buffers: the new state, one tensor per buffer in ``buffer_names``
            order; ``None`` in evaluation mode.
        pullback: a :class:`FunctionalPullback` (``grad=True``), a
            :class:`SecondOrderPullback` (``grad=True`` with tangents), or ``None``.
        tangents: the outputs' tangents, each ``(P, *output.shape)``, when the
            call had tangents; else ``None``.
    """

    outputs: tuple[torch.Tensor, ...]
    buffers: tuple[torch.Tensor | None, ...] | None
    pullback: Any
    tangents: tuple[torch.Tensor, ...] | None


class FunctionalModel(BridgedModel):
    """FunctionalModel: a torch module called on parameters and buffers given per call.

    ``param_names``/``params`` and ``buffer_names``/``buffers`` are the
    module's own trainable parameters and buffers (detached aliases): the
    initial values a caller copies, and what a call must match. Nothing is
    shared with the caller (``grads`` is empty) and the ledger does not count it
    as an open model; its pullbacks it counts. Calling :meth:`forward` runs
    the module on its own parameters, as for any bridged model. ``autocast``
    is as for :func:`~torchbridge.bridge`.
    """

    _shares_gradients = False

    def __init__(self, module: torch.nn.Module, *, input_shapes=None, autocast=None):
        super().__init__(module, input_shapes=input_shapes, distributed=False, autocast=autocast)
        # it shares nothing to count (its pullbacks are counted): not an open model
        LEDGER.remove_model(self)
        self._param_specs = tuple((p.shape, p.dtype, p.device) for p in self.params)
        self._buffer_specs = tuple((b.shape, b.dtype, b.device) for b in self.buffers)
        self._stateful = False  # see twin()

    @classmethod
    def twin(cls, model: BridgedModel) -> FunctionalModel:
        """twin(model) -> FunctionalModel: functional calls of a stateful model's module.

        For forward mode and second order on a :class:`BridgedModel`: the
        twin shares the model's module, lock and autocast, is made once per
        model (again if it was closed while the model is open) and is closed
        with it. Called with
        ``params=None`` and ``buffers=None`` it runs on the module's own
        tensors and, in training mode, updates the module's buffers in place
        as the model's own forward does.
        """
        model._check_open("twin")
        found = getattr(model, "_functional_twin", None)
        if found is not None and not found.closed:
            return found
        twin = cls(model.module, input_shapes=model._input_shapes, autocast=model.autocast)
        twin.lock = model.lock
        twin._stateful = True
        model._functional_twin = twin
        return twin

    def __repr__(self) -> str:
        return "Functional" + super().__repr__()

    # -- the call ------------------------------------------------------------
    def apply(
        self,
        params: Sequence[Any] | None,
        buffers: Sequence[Any] | None,
        *inputs: Any,
        grad: bool = True,
        training: bool | None = None,
        input_grads: bool | Sequence[bool] | Mapping[str | int, bool] = True,
        tangents: tuple[Sequence[Any] | None, Sequence[Any] | None] | None = None,
        **kw_inputs: Any,
    ) -> FunctionalResult:
        """apply(params, buffers, *inputs, grad=True, training=None, input_grads=True,
        tangents=None, **kw_inputs) -> FunctionalResult

        Run the module on ``params`` (one array per trainable parameter, in
        ``param_names`` order; ``None`` for the module's own) and ``buffers``
        (one per buffer, in ``buffer_names`` order; ``None`` for the module's
        own), as NOTE [functional calls] says. ``tangents`` is
        ``(param_tangents, input_tangents)``: per parameter and per input
        (positional, then keyword), a ``(P, *shape)`` array or ``None`` (NOTE
        [forward mode and second order]); either sequence may be ``None`` for
        all zeros. ``input_grads`` is as for :meth:`BridgedModel.forward`.

        A refused or failing call holds none of the arrays it viewed once the
        error reaches the caller.

        Raises:
            ParameterMismatchError: a parameter, buffer or tangent does not fit
                the module's (count, shape), or ``tangents`` disagree on ``P``.
            DTypeMismatchError, DeviceMismatchError: a parameter or buffer has
                another element type or device than the module's.
            InputGradsError: ``input_grads`` is not of a form it takes, or names
                an input that has no gradient.
            and every error of :meth:`BridgedModel.forward` for the inputs.
        """
        self._check_open("apply")
        # the flags' form is checked before any array is viewed
        wants, asked = _per_input(input_grads, len(inputs), tuple(kw_inputs))
        try:
            return self._apply(
                params, buffers, inputs, kw_inputs, grad, training, wants, asked, tangents
            )
        except BaseException as exc:
            # the failed call's frames hold the views; they go now, not with the traceback
            traceback.clear_frames(exc.__traceback__)
            raise

    def _apply(self, params, buffers, inputs, kw_inputs, grad, training, wants, asked, tangents):
        npos = len(inputs)
        values, names = self.checked_inputs(*inputs, **kw_inputs)
        if grad and asked:
            problem = _without_gradient(values, asked, npos, names)
            if problem is not None:
                raise InputGradsError(problem)
        if params is None:
            param_views = list(self.params)
        else:
            param_views = self._views("parameter", self.param_names, self._param_specs, params)
        # a twin's own buffers are updated in place, as its model's forward does
        in_place = buffers is None and self._stateful
        if buffers is None:
            buffer_views = list(self.buffers)
        else:
            buffer_views = self._views("buffer", self.buffer_names, self._buffer_specs, buffers)
        writes = self._writes(training)
        copies = writes and not in_place  # run on copies, returned as the new state
        directions = None if tangents is None else self._tangents(param_views, values, tangents)
        structure: OutputStructure
        with self.lock:
            self._set_mode(training)
            state = _clones(buffer_views) if copies else buffer_views
            if directions is not None:
                call = _Call(self, param_views, buffer_views, values, npos, names, writes, copies)
                outputs, out_tangents, structure = _jvp(call, state, directions)
                pullback = None
                if grad:
                    pullback = SecondOrderPullback(call, wants, directions, structure, outputs)
                self.output_structure = structure
                return FunctionalResult(outputs, _written(state, copies), pullback, out_tangents)
            if not grad:
                with torch.no_grad():
                    out = self._run(values, npos, names, self._functional_call(param_views, state))
                flat, structure = flatten_outputs(out)
                self.output_structure = structure
                return FunctionalResult(
                    tuple(self.returned(flat)), _written(state, copies), None, None
                )
            param_leaves = [p.detach().requires_grad_(True) for p in param_views]
            leaves = _leaves(values, wants)
            del values
            with torch.enable_grad():
                out = self._run(leaves, npos, names, self._functional_call(param_leaves, state))
        flat, structure = flatten_outputs(out)
        del out
        flat = self.returned(flat)
        self.output_structure = structure
        pullback = FunctionalPullback(
            self, param_leaves, leaves, flat, structure, (*range(npos), *names)
        )
        return FunctionalResult(
            tuple(o.detach() for o in flat), _written(state, copies), pullback, None
        )

    # -- helpers -------------------------------------------------------------
    def _functional_call(self, params: Sequence[torch.Tensor], buffers: Sequence[torch.Tensor]):
        tensors = dict(zip(self.param_names, params))
        tensors.update(zip(self.buffer_names, buffers))
        return _Reparametrized(self.module, tensors)

    def _set_mode(self, training: bool | None) -> None:
        if training is not None and self.module.training != training:
            self.module.train(training)

    def _writes(self, training: bool | None) -> bool:
        # whether a call may update buffers in place: training mode, with buffers
        mode = self.module.training if training is None else training
        return bool(mode and self.buffers)

    def _views(
        self, kind: str, names: tuple[str, ...], specs: tuple, values: Sequence[Any]
    ) -> list[torch.Tensor]:
        if len(values) != len(names):
            raise ParameterMismatchError(
                f"apply: the module has {len(names)} {kind}(s) ({_some(names)}), got "
                f"{len(values)}. Pass one array per {kind}, in the order of "
                f"{kind.replace('parameter', 'param')}_names."
            )
        return [_fit(kind, name, to_torch(v), spec) for name, v, spec in zip(names, values, specs)]

    def _tangents(self, params: list, values: list, tangents) -> tuple | None:
        # The tangents as (param_tangents, input_tangents, P), views of the
        # caller's arrays, or None when every one of them is zero.
        ptan, itan = tangents
        ptan = [None] * len(params) if ptan is None else list(ptan)
        itan = [None] * len(values) if itan is None else list(itan)
        if len(ptan) != len(params) or len(itan) != len(values):
            raise ParameterMismatchError(
                f"apply: tangents has {len(ptan)} parameter and {len(itan)} input entries for "
                f"{len(params)} parameters and {len(values)} inputs; pass None for a zero tangent."
            )
        count = set()
        out = []
        for kind, names, primals, ts in (
            ("parameter", self.param_names, params, ptan),
            ("input", [str(i) for i in range(len(values))], values, itan),
        ):
            views = []
            for name, p, t in zip(names, primals, ts):
                if t is None:
                    views.append(None)
                    continue
                if not isinstance(p, torch.Tensor) or not _differentiable(p):
                    raise ParameterMismatchError(
                        f"apply: {kind} {name} is not a floating-point array and has no "
                        "tangent; pass None for it."
                    )
                t = to_torch(t)
                if t.dim() != p.dim() + 1 or t.shape[1:] != p.shape:
                    raise ParameterMismatchError(
                        f"apply: the tangent of {kind} {name} has torch shape {tuple(t.shape)}; "
                        f"it must be (P, *{tuple(p.shape)}): P directions of the {kind}'s shape "
                        f"(Julia size ({', '.join(map(str, julia_shape(p.shape)))}, P))."
                    )
                if t.dtype != p.dtype or t.device != p.device:
                    raise ParameterMismatchError(
                        f"apply: the tangent of {kind} {name} is a {describe_array(t)}; it must "
                        f"have the {kind}'s element type and device ({p.dtype}, {p.device})."
                    )
                count.add(t.shape[0])
                views.append(t)
            out.append(views)
        if not count:
            return None
        if len(count) > 1:
            raise ParameterMismatchError(
                f"apply: the tangents carry different numbers of directions {sorted(count)}; "
                "every tangent has the same leading size P."
            )
        return out[0], out[1], count.pop()


# -- runs of the same function ----------------------------------------------------


class _Call:
    """One call with tangents, as every later run of its forward needs it.

    NOTE [the same function every run]
    Forward mode one direction at a time and a second-order pullback run the
    forward more than once. Each run must differentiate the function the
    first run computed, so each starts from the random generators' states the
    call started with (:meth:`replay`: dropout draws the same mask; the
    generators are restored afterwards, so the caller's stream of random
    numbers advances only by the first run) and, when the call writes buffers,
    from copies of the buffers as they were before it (:meth:`buffers`),
    never from what an earlier run wrote.
    """

    def __init__(self, model, params, buffers, values, npos, names, writes, copies):
        self.model = model
        self.params = list(params)
        self.values = list(values)
        self.npos, self.names = npos, names
        self.writes = writes
        # the buffers before the call: the caller's arrays (the call runs on copies of
        # them), or copies of the module's own when the first run updates them in place
        self.before = list(buffers) if copies or not writes else _clones(buffers)
        device = model.device
        self._cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
        self._cpu_rng = torch.get_rng_state()
        self._cuda_rng = [torch.cuda.get_rng_state(d) for d in self._cuda]

    def buffers(self) -> list[torch.Tensor]:
        """The buffers a later run starts from (copies, when runs write them)."""
        return _clones(self.before) if self.writes else self.before

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run a later forward with the random states the call started with."""
        with torch.random.fork_rng(devices=self._cuda):
            torch.set_rng_state(self._cpu_rng)
            for d, state in zip(self._cuda, self._cuda_rng):
                torch.cuda.set_rng_state(state, d)
            yield

    def restart(self) -> None:
        """Set the random generators back to the call's start (a first run begun again)."""
        torch.set_rng_state(self._cpu_rng)
        for d, state in zip(self._cuda, self._cuda_rng):
            torch.cuda.set_rng_state(state, d)

    def run(self, params: list, values: list, buffers: list) -> tuple[list, OutputStructure]:
        """The flat outputs (as the caller receives them) and their structure."""
        model = self.model
        call = model._functional_call(params, buffers)
        flat, structure = flatten_outputs(model._run(values, self.npos, self.names, call))
        return model.returned(flat), structure

    def held(self) -> list[torch.Tensor]:
        return [
            t for t in (*self.params, *self.values, *self.before) if isinstance(t, torch.Tensor)
        ]


class _Reparametrized:
    """The module called on ``tensors`` (``torch.func.functional_call``).

    NOTE [no view outlives a failed call]
    A failed call's traceback keeps its frames, and a frame keeps its
    function, closures included, until the traceback dies; clearing the
    frames (``traceback.clear_frames``, which :meth:`FunctionalModel.apply`
    does) drops their locals only. So what a run needs is held by plain
    objects, never by closures of ours, and where torch's own closures keep an
    object of ours (``vmap``'s function), that object holds the arrays in a
    list that a failure empties (:func:`_jvp`): the caller's arrays are
    released before the error reaches it.
    """

    __slots__ = ("module", "tensors")

    def __init__(self, module: torch.nn.Module, tensors: dict):
        self.module, self.tensors = module, tensors

    def __call__(self, *args, **kwargs):
        return torch.func.functional_call(self.module, self.tensors, args, kwargs, tie_weights=True)


class _Directional:
    """The outputs as a function of the tensors that carry tangents (for torch.func)."""

    def __init__(self, call: _Call, state: list, pidx: list, iidx: list):
        self.call, self.state, self.pidx, self.iidx = call, state, pidx, iidx
        self.structure: OutputStructure | None = None

    def __call__(self, pt, it):
        call = self.call
        ps = list(call.params)
        for i, p in zip(self.pidx, pt):
            ps[i] = p
        vs = list(call.values)
        for i, v in zip(self.iidx, it):
            vs[i] = v
        flat, self.structure = call.run(ps, vs, self.state)
        return tuple(flat)


def _jvp_of(held: list, a, b):
    # torch.func.jvp of the function `held` holds at its primals (a list, so a failure can
    # empty it: NOTE [no view outlives a failed call])
    f, primals = held
    return torch.func.jvp(f, primals, (a, b))


def _jvp(call: _Call, state: list, directions) -> tuple:
    """The outputs and their tangents ``(P, *shape)`` for each direction."""
    ptan, itan, ndir = directions
    pidx = [i for i, t in enumerate(ptan) if t is not None]
    iidx = [i for i, t in enumerate(itan) if t is not None]
    f = _Directional(call, state, pidx, iidx)
    primals = (tuple(call.params[i] for i in pidx), tuple(call.values[i] for i in iidx))

    def direction(k):
        return (tuple(ptan[i][k] for i in pidx), tuple(itan[i][k] for i in iidx))

    held: list = []
    if not call.writes:
        try:
            with torch.no_grad():
                if ndir == 1:
                    outputs, tangents = torch.func.jvp(f, primals, direction(0))
                    return outputs, tuple(t.unsqueeze(0) for t in tangents), f.structure
                batched = (tuple(ptan[i] for i in pidx), tuple(itan[i] for i in iidx))
                held = [f, primals]
                outputs, tangents = torch.func.vmap(
                    functools.partial(_jvp_of, held), in_dims=(0, 0), out_dims=(None, 0)
                )(*batched)
                return outputs, tangents, f.structure
        except Exception as exc:
            traceback.clear_frames(exc.__traceback__)
            held.clear()
            if ndir == 1 or not _no_batching_rule(exc):
                raise
            call.restart()  # vmap may have drawn random numbers before it gave up
    # one direction at a time under dual tensors: the call writes buffers, or an
    # operator has no batching rule (random ones among them)
    outputs = None
    per_direction = []
    for k in range(ndir):
        # the first run updates the returned state; later ones replay it on copies
        f.state = state if k == 0 else call.buffers()
        pt, it = direction(k)
        with contextlib.ExitStack() as stack:
            if k > 0:
                stack.enter_context(call.replay())
            stack.enter_context(fwAD.dual_level())
            stack.enter_context(torch.no_grad())
            duals = (
                tuple(fwAD.make_dual(p, t) for p, t in zip(primals[0], pt)),
                tuple(fwAD.make_dual(v, t) for v, t in zip(primals[1], it)),
            )
            flat = f(*duals)
            unpacked = [fwAD.unpack_dual(o) for o in flat]
            if outputs is None:
                outputs = tuple(u.primal.clone() for u in unpacked)
            per_direction.append(
                tuple(
                    torch.zeros_like(o) if u.tangent is None else u.tangent.clone()
                    for o, u in zip(outputs, unpacked)
                )
            )
    tangents = tuple(torch.stack(ts) for ts in zip(*per_direction))
    return outputs, tangents, f.structure


def _no_batching_rule(exc: BaseException) -> bool:
    text = str(exc)
    return "vmap" in text or "batching rule" in text or "Batching rule" in text


# -- pullbacks ----------------------------------------------------------------


class FunctionalPullback(Pullback):
    """FunctionalPullback: the reverse pass of one functional call.

    ``pullback(*cotangents) -> (param_grads, input_grads)``: new tensors, one
    per parameter (``param_names`` order) and one per input, ``None`` where no
    output reached it or the input is not differentiated. Nothing is written
    into the module, and there is nothing to accumulate into (``accumulate``
    is a :class:`~torchbridge.errors.CotangentError`, raised before anything
    runs). One-shot, released, scoped and counted like every
    :class:`~torchbridge.Pullback`.
    """

    __slots__ = ("_params",)

    def __init__(self, model, params: list, inputs: list, outputs: list, structure, names=()):
        self._params = params
        super().__init__(model, inputs, outputs, structure, names)

    def __call__(self, *cotangents, **named):
        if named.pop("accumulate", False):
            raise CotangentError(
                "pullback: a functional pullback returns new gradients and holds no buffers to "
                "accumulate into; add the results yourself. The pullback is still live."
            )
        return super().__call__(*cotangents, **named)

    def held_tensors(self) -> tuple[torch.Tensor, ...]:
        return (*self._params, *super().held_tensors())

    def _backward(self, pairs, accumulate: bool, *, retain: bool):
        params = self._params
        inputs = self._inputs
        diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        leaves = [*params, *diff]
        # The leaves are this call's own (views made for it), so the engine may
        # accumulate into their .grad unrestricted, as a plain backward does:
        # naming the leaves to torch.autograd.grad costs a few percent of a step.
        for t in leaves:
            t.grad = None
        if pairs and leaves:
            _run_backward([o for o, _ in pairs], [c for _, c in pairs], retain)
        grads = [t.grad for t in leaves]
        for t in leaves:
            t.grad = None
        param_grads = tuple(grads[: len(params)])
        found = iter(grads[len(params) :])
        input_grads = tuple(
            next(found) if isinstance(t, torch.Tensor) and t.requires_grad else None for t in inputs
        )
        return param_grads, input_grads

    def _free(self, state: str, *, by_gc: bool = False) -> None:
        self._params = []
        super()._free(state, by_gc=by_gc)


class SecondOrderPullback(Pullback):
    """SecondOrderPullback: the reverse pass of a functional call with tangents.

    ``pullback(cotangents, cotangent_tangents=None) -> (param_grads,
    input_grads, param_grad_tangents, input_grad_tangents)``: the gradients as
    a :class:`FunctionalPullback` gives them, and their tangents ``(P,
    *shape)`` along the call's directions and the cotangents' own tangents
    (one ``(P, *output.shape)`` array or ``None`` per output), NOTE [forward
    mode and second order]. It holds the call's inputs, parameters and
    tangents, not a graph: the forward runs again inside the call (NOTE [the
    same function every run]). Cotangents that do not fit raise
    :class:`~torchbridge.errors.CotangentError` and leave it live; otherwise
    one-shot unless created in a reusable scope, and counted like every
    :class:`~torchbridge.Pullback`.
    """

    __slots__ = ("_call", "_wants", "_ptan", "_itan", "_ndir")

    def __init__(self, call: _Call, wants, directions, structure, outputs):
        self._call = call
        self._wants = wants
        self._ptan, self._itan, self._ndir = list(directions[0]), list(directions[1]), directions[2]
        super().__init__(call.model, call.values, list(outputs), structure)

    def held_tensors(self) -> tuple[torch.Tensor, ...]:
        call = self._call
        held = [] if call is None else call.held()
        held += [t for t in (*self._ptan, *self._itan, *self._outputs) if t is not None]
        return tuple(held)

    def __call__(self, cotangents: Sequence[Any], cotangent_tangents: Sequence[Any] | None = None):
        with self._model.lock:
            self._check_live()
            cots, ctans = self._checked(cotangents, cotangent_tangents)
            try:
                return self._compute(cots, ctans)
            except BaseException as exc:
                traceback.clear_frames(exc.__traceback__)
                raise
            finally:
                if not self.reusable:
                    self._free("called")

    def _checked(self, cotangents, cotangent_tangents) -> tuple[list, list]:
        outputs = self._outputs
        cots = list(cotangents)
        ctans = [None] * len(outputs) if cotangent_tangents is None else list(cotangent_tangents)
        if len(cots) != len(outputs) or len(ctans) != len(outputs):
            raise CotangentError(
                f"pullback: expected {len(outputs)} cotangent(s) and as many cotangent tangents, "
                f"one per output ({self.output_structure}), got {len(cots)} and {len(ctans)}."
            )
        cots = [
            None if c is None else _check_cotangent(i, o, c)
            for i, (o, c) in enumerate(zip(outputs, cots))
        ]
        ctans = [
            None if t is None else _check_tangent(i, o, to_torch(t), self._ndir)
            for i, (o, t) in enumerate(zip(outputs, ctans))
        ]
        return cots, ctans

    def _compute(self, cots: list, ctans: list):
        call = self._call
        params, values = call.params, call.values
        wanted = [
            i
            for i, v in enumerate(values)
            if self._wants[i] and isinstance(v, torch.Tensor) and _differentiable(v)
        ]
        primal_grads = None
        tangent_grads: list[list] = []
        for k in range(self._ndir):
            with call.replay(), fwAD.dual_level(), torch.enable_grad():
                pl = [
                    _dual_leaf(p, None if t is None else t[k]) for p, t in zip(params, self._ptan)
                ]
                vs = list(values)
                for i in wanted:
                    t = self._itan[i]
                    vs[i] = _dual_leaf(values[i], None if t is None else t[k])
                flat, _ = call.run(pl, vs, call.buffers())
                pairs = [
                    (o, c if t is None else fwAD.make_dual(c, t[k]))
                    for o, c, t in zip(flat, cots, ctans)
                    if c is not None and o.requires_grad
                ]
                leaves = [*pl, *(vs[i] for i in wanted)]
                grads = (None,) * len(leaves)
                if pairs:
                    grads = torch.autograd.grad(
                        [o for o, _ in pairs], leaves, [c for _, c in pairs], allow_unused=True
                    )
                unpacked = [None if g is None else fwAD.unpack_dual(g) for g in grads]
                if primal_grads is None:
                    primal_grads = [None if u is None else u.primal.detach() for u in unpacked]
                tangent_grads.append(
                    [
                        None if u is None or u.tangent is None else u.tangent.detach().clone()
                        for u in unpacked
                    ]
                )
        assert primal_grads is not None
        stacked = []
        for j, g in enumerate(primal_grads):
            per = [ts[j] for ts in tangent_grads]
            if g is None and all(t is None for t in per):
                stacked.append(None)
                continue
            ref = g if g is not None else next(t for t in per if t is not None)
            stacked.append(torch.stack([torch.zeros_like(ref) if t is None else t for t in per]))
        n = len(params)
        input_grads: list = [None] * len(values)
        input_tangents: list = [None] * len(values)
        for slot, i in enumerate(wanted):
            input_grads[i] = primal_grads[n + slot]
            input_tangents[i] = stacked[n + slot]
        return (
            tuple(primal_grads[:n]),
            tuple(input_grads),
            tuple(stacked[:n]),
            tuple(input_tangents),
        )

    def _free(self, state: str, *, by_gc: bool = False) -> None:
        self._call = None
        self._ptan = self._itan = []
        super()._free(state, by_gc=by_gc)

    def __repr__(self) -> str:
        return f"SecondOrderPullback({self._state}, {self._ndir} direction(s))"


# -- small helpers ------------------------------------------------------------


def _fit(kind: str, name: str, t: torch.Tensor, spec) -> torch.Tensor:
    shape, dtype, device = spec
    if t.shape != shape:
        if t.numel() == 1 and len(shape) == 0:
            t = t.reshape(())  # the one-element form a 0-dim parameter crosses in
        else:
            raise ParameterMismatchError(
                f"apply: {kind} {name!r} is a {describe_array(t)} (Julia size "
                f"{julia_shape(t.shape)}), but the module's has torch shape {tuple(shape)} "
                f"(Julia size {julia_shape(shape)}). Pass the arrays the model's initial "
                f"{kind}s have, in order."
            )
    if t.dtype != dtype:
        raise DTypeMismatchError(
            f"apply: {kind} {name!r} is a {describe_array(t)}, but the module's is {dtype}. "
            "Convert the array, or the module before wrapping it."
        )
    if t.device != device:
        raise DeviceMismatchError(
            f"apply: {kind} {name!r} is on {t.device}, but the module is on {device}; pass "
            "arrays on the module's device."
        )
    return t


def _check_tangent(i: int, out: torch.Tensor, t: torch.Tensor, ndir: int) -> torch.Tensor:
    if t.shape != (ndir, *out.shape) or t.dtype != out.dtype or t.device != out.device:
        raise CotangentError(
            f"pullback: the tangent of cotangent {i} is a {describe_array(t)}; it must be "
            f"({ndir}, *{tuple(out.shape)}) of {out.dtype} on {out.device}, one per direction."
        )
    return t


def _differentiable(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _dual_leaf(p: torch.Tensor, tangent: torch.Tensor | None) -> torch.Tensor:
    leaf = p.detach().requires_grad_(True)
    return leaf if tangent is None else fwAD.make_dual(leaf, tangent)


def _clones(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.clone() for t in tensors]


def _written(state: Sequence[torch.Tensor], writes: bool) -> tuple | None:
    # Every buffer of a training call, which ran on copies: kernels such as
    # batch norm's update running statistics without moving a version counter,
    # so which copies changed cannot be told cheaply. Nothing in evaluation mode.
    return tuple(state) if writes else None


def _some(names: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (", ..." if len(names) > n else "")
