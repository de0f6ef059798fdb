"""Functional calls (parameters and buffers per call), forward mode and second order.

Values are compared with torch's own ``torch.func`` on the same functional
call (vjp, jvp, jvp of vjp) and with plain autograd of the module itself.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, jvp, vjp

import torchbridge
from julia_arrays import ArrayValue
from models import mlp, small_cnn
from torchbridge import julia_support as jl
from torchbridge.functional import FunctionalModel, SecondOrderPullback

TIGHT = {"rtol": 1e-9, "atol": 1e-11}


def perturbed(fm: FunctionalModel, scale: float = 0.1) -> list[torch.Tensor]:
    """Parameters other than the module's own, so a test sees which ones ran."""
    return [p.detach().clone() + scale * torch.randn_like(p) for p in fm.params]


def reference(module, params, names):
    return lambda p, x: functional_call(module, dict(zip(names, p)), (x,))


@pytest.fixture
def baseline():
    with torchbridge.memory.expect_baseline() as base:
        yield base


def test_gradients_equal_torch_func_vjp(baseline):
    """Outputs, parameter and input gradients equal torch.func.vjp of the same call."""
    module = mlp()
    fm = FunctionalModel(module)
    ps = perturbed(fm)
    x = torch.randn(5, 6, dtype=torch.float64)
    ybar = torch.randn(5, 4, dtype=torch.float64)
    result = fm.apply(ps, None, x)
    pgrads, igrads = result.pullback(ybar)
    y, back = vjp(reference(module, ps, fm.param_names), tuple(ps), x)
    ref_p, ref_x = back(ybar)
    torch.testing.assert_close(result.outputs[0], y, **TIGHT)
    for a, b in zip(pgrads, ref_p):
        torch.testing.assert_close(a, b, **TIGHT)
    torch.testing.assert_close(igrads[0], ref_x, **TIGHT)
    assert result.buffers is None
    assert all(p.grad is None for p in module.parameters()), "the module got .grad"
    fm.close()


def test_parameters_are_viewed_not_copied(baseline):
    """A Julia-ordered parameter array is the tensor the module runs on (same address)."""
    seen = {}

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(3, 4))

        def forward(self, x):
            seen["ptr"] = self.weight.data_ptr()
            return x @ self.weight.T

    fm = FunctionalModel(Probe())
    julia_weight = ArrayValue(np.asfortranarray(np.random.rand(4, 3).astype(np.float32)))
    x = torch.randn(2, 4)
    out = fm.apply([julia_weight], None, x, grad=False).outputs[0]
    assert seen["ptr"] == julia_weight.array.ctypes.data
    torch.testing.assert_close(out, x @ torch.from_numpy(julia_weight.array))
    fm.close()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm_state_comes_back_and_nothing_is_mutated(mode, baseline):
    """Train mode returns the updated buffers (equal to torch's own step) and leaves the
    caller's buffers and the module's alone; eval mode returns no new state."""
    module = small_cnn().train(mode == "train")
    fm = FunctionalModel(module)
    ps = [p.detach().clone() for p in fm.params]
    bs = [b.detach().clone() for b in fm.buffers]
    before = [b.clone() for b in bs]
    own = [b.clone() for b in module.buffers()]
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    cot = torch.randn(4, 5, dtype=torch.float64)
    ref = copy.deepcopy(module)
    torch.manual_seed(7)
    result = fm.apply(ps, bs, x)
    pgrads, _ = result.pullback(cot)
    xr = x.clone()
    torch.manual_seed(7)
    ref(xr).backward(cot)
    for a, b in zip(bs, before):
        assert torch.equal(a, b), "the caller's buffers were written"
    for a, b in zip(module.buffers(), own):
        assert torch.equal(a, b), "the module's own buffers were written"
    ref_grads = [p.grad for p in ref.parameters()]
    for a, b in zip(pgrads, ref_grads):
        torch.testing.assert_close(a, b, **TIGHT)
    if mode == "eval":
        assert result.buffers is None
    else:
        for new, (name, b) in zip(result.buffers, ref.named_buffers()):
            torch.testing.assert_close(new, b, **TIGHT, msg=name)
        assert int(result.buffers[fm.buffer_names.index("1.num_batches_tracked")]) == 1
    fm.close()


@pytest.mark.parametrize("directions", [1, 3])
def test_jvp_equals_torch_func_jvp(directions, baseline):
    """The outputs' tangents for P directions equal torch.func.jvp of each direction."""
    module = mlp()
    fm = FunctionalModel(module)
    ps = perturbed(fm)
    x = torch.randn(5, 6, dtype=torch.float64)
    pt = [torch.randn(directions, *p.shape, dtype=p.dtype) for p in ps]
    xt = torch.randn(directions, *x.shape, dtype=x.dtype)
    result = fm.apply(ps, None, x, grad=False, tangents=(pt, [xt]))
    f = reference(module, ps, fm.param_names)
    assert result.tangents[0].shape == (directions, 5, 4)
    for k in range(directions):
        y, t = jvp(f, (tuple(ps), x), (tuple(q[k] for q in pt), xt[k]))
        torch.testing.assert_close(result.outputs[0], y, **TIGHT)
        torch.testing.assert_close(result.tangents[0][k], t, **TIGHT)
    fm.close()


def test_jvp_with_zero_tangents_for_some_arrays(baseline):
    """None tangents are zeros: a tangent for the input alone is the input Jacobian's."""
    module = mlp()
    fm = FunctionalModel(module)
    ps = perturbed(fm)
    x = torch.randn(5, 6, dtype=torch.float64)
    xt = torch.randn(2, *x.shape, dtype=x.dtype)
    result = fm.apply(ps, None, x, grad=False, tangents=(None, [xt]))
    g = lambda x: functional_call(module, dict(zip(fm.param_names, ps)), (x,))  # noqa: E731
    for k in range(2):
        torch.testing.assert_close(result.tangents[0][k], jvp(g, (x,), (xt[k],))[1], **TIGHT)
    fm.close()


def test_jvp_in_train_mode_with_batchnorm(baseline):
    """Train-mode BatchNorm (an in-place buffer update torch.func refuses) gives the
    forward-mode tangent of plain autograd's function, and the state of one step."""
    module = small_cnn().train()
    module[3].p = 0.0  # dropout off: the tangent is deterministic
    fm = FunctionalModel(module)
    ps = [p.detach().clone() for p in fm.params]
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    xt = torch.randn(2, *x.shape, dtype=x.dtype)
    result = fm.apply(ps, None, x, grad=False, tangents=(None, [xt]))
    ref = copy.deepcopy(module)
    for k in range(2):
        r = copy.deepcopy(module)
        with fwAD.dual_level():
            t = fwAD.unpack_dual(r(fwAD.make_dual(x, xt[k]))).tangent
        torch.testing.assert_close(result.tangents[0][k], t, **TIGHT)
    ref(x)
    for new, b in zip(result.buffers, ref.buffers()):
        torch.testing.assert_close(new, b, **TIGHT)
    fm.close()


def test_second_order_equals_jvp_of_vjp(baseline):
    """Forward over reverse: the gradients' tangents equal torch.func.jvp of the vjp,
    with tangents on parameters, input and cotangent."""
    module = mlp()
    fm = FunctionalModel(module)
    ps = perturbed(fm)
    x = torch.randn(5, 6, dtype=torch.float64)
    pt = [torch.randn(2, *p.shape, dtype=p.dtype) for p in ps]
    xt = torch.randn(2, *x.shape, dtype=x.dtype)
    ybar = torch.randn(5, 4, dtype=torch.float64)
    ydot = torch.randn(2, 5, 4, dtype=torch.float64)
    result = fm.apply(ps, None, x, tangents=(pt, [xt]))
    assert isinstance(result.pullback, SecondOrderPullback)
    pg, ig, pgt, igt = result.pullback([ybar], [ydot])
    f = reference(module, ps, fm.param_names)

    def vjp_of(p, x, yb):
        return vjp(f, p, x)[1](yb)

    for k in range(2):
        (ref_p, ref_x), (tan_p, tan_x) = jvp(
            vjp_of, (tuple(ps), x, ybar), (tuple(q[k] for q in pt), xt[k], ydot[k])
        )
        for a, b in zip(pg, ref_p):
            torch.testing.assert_close(a, b, **TIGHT)
        torch.testing.assert_close(ig[0], ref_x, **TIGHT)
        for a, b in zip(pgt, tan_p):
            torch.testing.assert_close(a[k], b, **TIGHT)
        torch.testing.assert_close(igt[0][k], tan_x, **TIGHT)
    fm.close()


def test_hessian_vector_product_of_a_loss(baseline):
    """A loss computed outside (sum of squares): the cotangent's tangent is the loss's
    second derivative along the output tangent, and the parameters' result is torch's hvp."""
    module = mlp()
    fm = FunctionalModel(module)
    ps = perturbed(fm)
    x = torch.randn(5, 6, dtype=torch.float64)
    v = [torch.randn(1, *p.shape, dtype=p.dtype) for p in ps]
    result = fm.apply(ps, None, x, tangents=(v, None))
    y, ydot = result.outputs[0], result.tangents[0]
    _, _, hv, _ = result.pullback([2 * y], [2 * ydot])  # d/dy sum(y^2) = 2y

    def loss(*p):
        return functional_call(module, dict(zip(fm.param_names, p)), (x,)).pow(2).sum()

    _, ref = jvp(
        torch.func.grad(loss, argnums=tuple(range(len(ps)))), tuple(ps), tuple(t[0] for t in v)
    )
    for a, b in zip(hv, ref):
        torch.testing.assert_close(a[0], b, **TIGHT)
    fm.close()


def test_refusals_are_typed_and_leave_nothing(baseline):
    """Wrong count, shape, dtype of parameters and tangents: typed errors, nothing held."""
    fm = FunctionalModel(mlp())
    ps = [p.detach().clone() for p in fm.params]
    x = torch.randn(5, 6, dtype=torch.float64)
    with pytest.raises(torchbridge.ParameterMismatchError, match="4 parameter"):
        fm.apply(ps[:3], None, x)
    with pytest.raises(torchbridge.ParameterMismatchError, match="'0.weight'"):
        fm.apply([ps[0].T.contiguous(), *ps[1:]], None, x)
    with pytest.raises(torchbridge.DTypeMismatchError, match="'0.bias'"):
        fm.apply([ps[0], ps[1].float(), *ps[2:]], None, x)
    with pytest.raises(torchbridge.ParameterMismatchError, match="directions"):
        fm.apply(
            ps,
            None,
            x,
            tangents=(
                [torch.zeros(2, *p.shape, dtype=p.dtype) for p in ps],
                [torch.zeros(3, 5, 6, dtype=torch.float64)],
            ),
        )
    with pytest.raises(torchbridge.ParameterMismatchError, match="tangent of parameter"):
        fm.apply(ps, None, x, tangents=([torch.zeros(2, 3)] + [None] * 3, None))
    with pytest.raises(torchbridge.DTypeMismatchError):
        fm.apply(ps, None, x.float())
    fm.close()


def test_twin_of_a_bridged_model_updates_its_own_state(baseline):
    """Forward mode on a stateful model: its own parameters, its BatchNorm statistics
    updated in place once, as its forward would."""
    module = small_cnn().train()
    module[3].p = 0.0
    ref = copy.deepcopy(module)
    bm = torchbridge.bridge(module)
    twin = jl.functional_model(bm)
    assert jl.functional_model(bm) is twin
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    xt = torch.randn(3, *x.shape, dtype=x.dtype)
    result = twin.apply(None, None, x, grad=False, tangents=(None, [xt]))
    assert result.buffers is None
    ref(x)
    for a, b in zip(module.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, **TIGHT)
    assert torchbridge.memory.stats().open_models == baseline.open_models + 1
    live = twin.apply(None, None, x, tangents=(None, [xt])).pullback
    bm.close()  # closes the twin too: its pullbacks are released
    assert not live.live
    with pytest.raises(torchbridge.ModelClosedError):
        twin.apply(None, None, x)


def test_packed_duals_cross_as_julia_sends_them(baseline):
    """julia_support: duals packed as (*shape, P+1) go in and come out packed; values and
    tangents equal the unpacked call's; gradients of a second-order pullback come packed."""
    module = mlp()
    fm = jl.functional_model(module)
    state = jl.functional_state(fm)
    assert state["param_names"] == fm.param_names
    assert state["param_layouts"][0] == ((6, 16), "Float64", "cpu", -1)
    ps = [p.clone() for p in state["params"]]
    x = torch.randn(5, 6, dtype=torch.float64)
    xt = torch.randn(2, *x.shape, dtype=x.dtype)
    packed_x = torch.cat((x.unsqueeze(-1), xt.movedim(0, -1)), dim=-1)
    out, pullback, layouts, addresses, buffers, _, _ = jl.functional_apply(
        fm, None, ps, None, [packed_x], None, True, None, True, ([False] * 4, [True])
    )
    assert buffers is None and layouts[0] == ((3, 4, 5), "Float64", "cpu", -1)
    assert addresses[0] == out[0].data_ptr()
    f = lambda x: functional_call(module, dict(zip(fm.param_names, ps)), (x,))  # noqa: E731
    for k in range(2):
        y, t = jvp(f, (x,), (xt[k],))
        torch.testing.assert_close(out[0][..., 0], y, **TIGHT)
        torch.testing.assert_close(out[0][..., k + 1], t, **TIGHT)
    ybar = torch.randn(5, 4, 3, dtype=torch.float64)  # packed cotangent, 2 partials
    grads, glayouts, _ = jl.functional_pullback(pullback, [ybar], [True])
    assert len(grads) == 5 and grads[-1].shape == (5, 6, 3)
    assert glayouts[0] == ((3, 6, 16), "Float64", "cpu", -1)

    def vjp_of(x, yb):
        return vjp(f, x)[1](yb)[0]

    for k in range(2):
        g, gt = jvp(vjp_of, (x, ybar[..., 0]), (xt[k], ybar[..., k + 1]))
        torch.testing.assert_close(grads[-1][..., 0], g, **TIGHT)
        torch.testing.assert_close(grads[-1][..., k + 1], gt, **TIGHT)
    fm.close()


def test_pullback_error_releases(baseline):
    """A cotangent that does not fit: CotangentError, and the pullback holds nothing after."""
    fm = FunctionalModel(mlp())
    result = fm.apply(None, None, torch.randn(5, 6, dtype=torch.float64))
    with pytest.raises(torchbridge.CotangentError):
        jl.functional_pullback(result.pullback, [torch.zeros(3, 3, dtype=torch.float64)])
    assert not result.pullback.live
    fm.close()


def dropout_mlp() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Dropout(0.5), torch.nn.Tanh(), torch.nn.Linear(16, 4)
    ).double()


def test_every_direction_and_recompute_draws_the_same_dropout_mask(baseline):
    """Forward mode one direction at a time and the second-order recompute differentiate
    the function the first run computed: equal directions give equal tangents, and the
    gradients' tangents equal torch.func's jvp of the vjp from the same random state."""
    module = dropout_mlp().train()
    fm = FunctionalModel(module)
    ps = perturbed(fm)
    x = torch.randn(5, 6, dtype=torch.float64)
    xt = torch.randn(1, *x.shape, dtype=x.dtype).expand(3, *x.shape).clone()
    result = fm.apply(ps, None, x, grad=False, tangents=(None, [xt]))
    t = result.tangents[0]
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
    ybar = torch.randn(5, 4, dtype=torch.float64)
    ydot = torch.randn(2, 5, 4, dtype=torch.float64)
    pt = [torch.randn(2, *p.shape, dtype=p.dtype) for p in ps]
    state = torch.get_rng_state()
    result = fm.apply(ps, None, x, tangents=(pt, None))
    pg, _, pgt, _ = result.pullback([ybar], [ydot])
    f = reference(module, ps, fm.param_names)

    def vjp_of(p, yb):
        return vjp(lambda p: f(p, x), p)[1](yb)[0]

    for k in range(2):
        torch.set_rng_state(state)
        (ref_p,), (tan_p,) = jvp(
            lambda p, yb: (vjp_of(p, yb),), (tuple(ps), ybar), (tuple(q[k] for q in pt), ydot[k])
        )
        for a, b, c, d in zip(pg, ref_p, pgt, tan_p):
            torch.testing.assert_close(a, b, **TIGHT)
            torch.testing.assert_close(c[k], d, **TIGHT)
    fm.close()


def test_the_twin_of_an_autocast_model_computes_its_forward(baseline):
    """A model bridged with autocast: its twin's outputs (what duals see) are its forward's."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    bm = torchbridge.bridge(module, autocast="bfloat16")
    x = torch.randn(5, 6)
    forward, _ = bm.forward(x, grad=False)
    twin = jl.functional_model(bm)
    result = twin.apply(None, None, x, grad=False, tangents=(None, [torch.randn(1, 5, 6)]))
    assert result.outputs[0].dtype == torch.float32
    torch.testing.assert_close(result.outputs[0], forward[0], rtol=0, atol=0)
    assert not torch.equal(result.outputs[0], module(x))  # autocast made a difference
    bm.close()


@pytest.mark.parametrize(
    "bad",
    [
        "input_grads",
        "parameter shape",
        "parameter count",
        "tangent",
        "module raises",
        "module raises in forward mode",
        "module raises in forward mode, batched",
        "module raises in forward mode, per direction",
    ],
)
def test_a_refused_call_holds_none_of_its_arrays(bad, baseline):
    """Whatever refuses the call, every DLPack view it made is released before the error
    reaches the caller (the producer's deleter ran), while the caller holds the error."""
    from dlpack_producer import CountingProducer

    module = torch.nn.Sequential(torch.nn.Linear(6, 4)).double()
    if bad.startswith("module raises"):
        module = torch.nn.Sequential(torch.nn.Linear(5, 4)).double()  # 6 features do not fit
    if bad.endswith("per direction"):
        # dropout has no batching rule, so directions run one at a time, and each fails
        module = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(5, 4)).double()
    fm = FunctionalModel(module)
    x = CountingProducer(np.random.rand(3, 6))
    linear = module[-1]
    w = CountingProducer(np.random.rand(4, linear.in_features))
    params = [w, fm.params[1].clone()]
    kw = {}
    if bad == "input_grads":
        kw["input_grads"] = [True, False]
    elif bad == "parameter shape":
        params = [CountingProducer(np.random.rand(6, 6)), fm.params[1].clone()]
        w = params[0]
    elif bad == "parameter count":
        params = [w]
    elif bad == "tangent":
        kw["tangents"] = (None, [torch.zeros(2, 3, 5, dtype=torch.float64)])
    elif bad.startswith("module raises in forward mode"):
        directions = 1 if bad == "module raises in forward mode" else 3
        kw["tangents"] = (None, [torch.zeros(directions, 3, 6, dtype=torch.float64)])
    try:
        fm.apply(params, None, x, **kw)
    except torchbridge.TorchBridgeError as exc:
        error = exc
    assert isinstance(error, torchbridge.TorchBridgeError)
    assert x.exported == x.deleted, "the input's view outlived the refused call"
    assert w.exported == w.deleted, "a parameter's view outlived the refused call"
    del error
    fm.close()


def test_julia_support_functional_calls_refuse_what_is_not_theirs(baseline):
    """Anything but a functional model or its pullback is a typed error naming the call."""
    with pytest.raises(torchbridge.NotAModuleError, match="functional_model"):
        jl.functional_model("timm/resnet18")
    for call in (jl.functional_state, lambda m: jl.functional_apply(m, None, None, None, [])):
        with pytest.raises(torchbridge.NotAModuleError, match="FunctionalModel"):
            call(torch.nn.Linear(2, 2))
    bm = torchbridge.bridge(mlp())
    _, pullback = bm.forward(torch.randn(5, 6, dtype=torch.float64))
    with pytest.raises(torchbridge.NotAPullbackError, match="functional call"):
        jl.functional_pullback(pullback, [None])
    fm = FunctionalModel(mlp())
    result = fm.apply(None, None, torch.randn(5, 6, dtype=torch.float64))
    with pytest.raises(torchbridge.NotAPullbackError, match="functional_pullback"):
        jl.pullback(result.pullback, None)
    assert result.pullback.live and pullback.live
    result.pullback.release()
    pullback.release()
    fm.close()
    bm.close()


def test_functional_pullbacks_keep_the_pullback_contract(baseline):
    """A cotangent that does not fit, or accumulate=True, raises CotangentError and leaves
    the pullback live; a twin closed by hand is made again for its open model."""
    fm = FunctionalModel(mlp())
    x = torch.randn(5, 6, dtype=torch.float64)
    first = fm.apply(None, None, x).pullback
    with pytest.raises(torchbridge.CotangentError, match="accumulate"):
        first(torch.ones(5, 4, dtype=torch.float64), accumulate=True)
    assert first.live
    first(torch.ones(5, 4, dtype=torch.float64))
    second = fm.apply(None, None, x, tangents=(None, [torch.randn(1, 5, 6, dtype=torch.float64)]))
    with pytest.raises(torchbridge.CotangentError):
        second.pullback([torch.ones(3, 3, dtype=torch.float64)])
    assert second.pullback.live
    second.pullback.release()
    fm.close()
    bm = torchbridge.bridge(mlp())
    twin = jl.functional_model(bm)
    twin.close()
    again = jl.functional_model(bm)
    assert again is not twin and not again.closed
    again.apply(None, None, x, grad=False)
    bm.close()
    assert again.closed
