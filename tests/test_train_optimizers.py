"""Optimisers.jl rules as torch optimisers: each step equals the Optimisers.jl update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchbridge.errors import UnknownOptimizerError
from torchbridge.train import optimizer_from_spec, supported_rules
from torchbridge.train import rules as exact_rules

X0 = np.array([0.5, -1.5, 2.0, 0.0])
# a different gradient at every step, so that the state really matters
GRADS = [
    np.array([0.1, -0.2, 0.3, 1.0]),
    np.array([-0.4, 0.5, 0.25, -1.0]),
    np.array([0.3, 0.3, -0.6, 0.5]),
]


# -- Optimisers.jl's apply!, transcribed from src/rules.jl (float64, by hand) ----


def julia_descent(eta):
    def apply(state, x, dx):
        return state, eta * dx

    return None, apply


def julia_momentum(eta, rho):
    def apply(mvel, x, dx):
        mvel = rho * mvel + eta * dx
        return mvel, mvel

    return np.zeros_like(X0), apply


def julia_nesterov(eta, rho):
    def apply(vel, x, dx):
        newdx = -(rho**2) * vel + (1 + rho) * eta * dx
        vel = rho * vel - eta * dx
        return vel, newdx

    return np.zeros_like(X0), apply


def julia_rmsprop(eta, rho, eps, centred):
    def apply(state, x, dx):
        quad, lin = state
        quad = rho * quad + (1 - rho) * dx**2
        if centred:
            lin = rho * lin + (1 - rho) * dx
        return (quad, lin), dx * eta / (np.sqrt(quad - lin**2) + eps)

    return (np.zeros_like(X0), np.zeros_like(X0)), apply


def julia_adam(eta, beta, eps):
    def apply(state, x, dx):
        mt, vt, bt = state
        mt = beta[0] * mt + (1 - beta[0]) * dx
        vt = beta[1] * vt + (1 - beta[1]) * dx**2
        out = mt / (1 - bt[0]) / (np.sqrt(vt / (1 - bt[1])) + eps) * eta
        return (mt, vt, (bt[0] * beta[0], bt[1] * beta[1])), out

    return (np.zeros_like(X0), np.zeros_like(X0), tuple(beta)), apply


def julia_adamw(eta, beta, lam, eps, couple):
    def apply(state, x, dx):
        mt, vt, bt = state
        mt = beta[0] * mt + (1 - beta[0]) * dx
        vt = beta[1] * vt + (1 - beta[1]) * dx**2
        adam = mt / (1 - bt[0]) / (np.sqrt(vt / (1 - bt[1])) + eps)
        out = eta * (adam + lam * x) if couple else eta * adam + lam * x
        return (mt, vt, (bt[0] * beta[0], bt[1] * beta[1])), out

    return (np.zeros_like(X0), np.zeros_like(X0), tuple(beta)), apply


def julia_adagrad(eta, eps):
    def apply(acc, x, dx):
        acc = acc + dx**2
        return acc, dx * eta / (np.sqrt(acc) + eps)

    return np.full_like(X0, eps), apply


def julia_trajectory(rule, grads=GRADS, etas=None):
    """x after each step of Optimisers.update!; ``etas`` changes η between steps (adjust!)."""
    x, out = X0.copy(), []
    state, apply = rule(None)
    for i, g in enumerate(grads):
        if etas is not None:
            _, apply = rule(etas[i])
        state, dx = apply(state, x, g)
        x = x - dx
        out.append(x.copy())
    return out


def torch_trajectory(spec, grads=GRADS, etas=None, dtype=torch.float64):
    w = torch.nn.Parameter(torch.tensor(X0, dtype=dtype))
    opt = optimizer_from_spec(spec, [w])
    out = []
    for i, g in enumerate(grads):
        if etas is not None:
            opt.param_groups[0]["lr"] = etas[i]
        w.grad = torch.tensor(g, dtype=dtype)
        opt.step()
        opt.zero_grad()
        out.append(w.detach().numpy().astype(np.float64).copy())
    return out


CASES = [
    ({"rule": "Descent", "eta": 0.1}, lambda eta: julia_descent(eta or 0.1)),
    ({"rule": "Momentum", "eta": 0.05, "rho": 0.8}, lambda eta: julia_momentum(eta or 0.05, 0.8)),
    ({"rule": "Nesterov", "eta": 0.05, "rho": 0.7}, lambda eta: julia_nesterov(eta or 0.05, 0.7)),
    (
        {"rule": "RMSProp", "eta": 0.01, "rho": 0.85, "epsilon": 1e-6},
        lambda eta: julia_rmsprop(eta or 0.01, 0.85, 1e-6, False),
    ),
    (
        {"rule": "RMSProp", "eta": 0.01, "rho": 0.85, "epsilon": 1e-6, "centred": True},
        lambda eta: julia_rmsprop(eta or 0.01, 0.85, 1e-6, True),
    ),
    (
        {"rule": "Adam", "eta": 0.01, "beta": [0.8, 0.95], "epsilon": 1e-3},
        lambda eta: julia_adam(eta or 0.01, (0.8, 0.95), 1e-3),
    ),
    (
        {"rule": "AdamW", "eta": 0.01, "beta": (0.8, 0.95), "lambda": 0.1, "epsilon": 1e-3},
        lambda eta: julia_adamw(eta or 0.01, (0.8, 0.95), 0.1, 1e-3, True),
    ),
    (
        {"rule": "AdamW", "eta": 0.01, "beta": (0.8, 0.95), "lambda": 0.1, "couple": False},
        lambda eta: julia_adamw(eta or 0.01, (0.8, 0.95), 0.1, 1e-8, False),
    ),
    (
        {"rule": "AdaGrad", "eta": 0.1, "epsilon": 1e-4},
        lambda eta: julia_adagrad(eta or 0.1, 1e-4),
    ),
]
IDS = [
    "-".join(str(v) for k, v in spec.items() if k in ("rule", "centred", "couple"))
    for spec, _ in CASES
]


def _stateful(rule_factory):
    """Adapt a (state, apply) factory to julia_trajectory's rule(eta) protocol."""
    initial = {}

    def rule(eta):
        state, apply = rule_factory(eta)
        initial.setdefault("state", state)
        return initial["state"], apply

    return rule


class TestExactUpdates:
    @pytest.mark.parametrize(("spec", "factory"), CASES, ids=IDS)
    def test_one_step_equals_optimisers_jl(self, spec, factory):
        """One step of each rule equals Optimisers.jl's update on the same gradient."""
        expected = julia_trajectory(_stateful(factory), grads=GRADS[:1])
        got = torch_trajectory(spec, grads=GRADS[:1])
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-12, atol=1e-14)
        assert not np.allclose(got[0], X0)  # the step moved the parameters

    @pytest.mark.parametrize(("spec", "factory"), CASES, ids=IDS)
    def test_three_steps_equal_optimisers_jl(self, spec, factory):
        """Three steps with changing gradients follow Optimisers.jl's trajectory, state included."""
        expected = julia_trajectory(_stateful(factory))
        got = torch_trajectory(spec)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)

    @pytest.mark.parametrize(("spec", "factory"), CASES, ids=IDS)
    def test_changing_eta_follows_optimisers_jl(self, spec, factory):
        """With η changed between steps (a schedule), the update is still Optimisers.jl's."""
        etas = [0.05, 0.02, 0.08]
        expected = julia_trajectory(_stateful(factory), etas=etas)
        got = torch_trajectory(spec, etas=etas)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)

    @pytest.mark.parametrize(("spec", "factory"), CASES, ids=IDS)
    def test_float32_matches_to_single_precision(self, spec, factory):
        """In float32 the trajectory matches the float64 reference to single precision."""
        expected = julia_trajectory(_stateful(factory))
        got = torch_trajectory(spec, dtype=torch.float32)
        np.testing.assert_allclose(got[-1], expected[-1], rtol=1e-5, atol=1e-6)

    def test_torch_sgd_momentum_would_differ_under_a_schedule(self):
        """torch's SGD momentum keeps η out of its velocity, so a changed η would break it."""
        etas = [0.05, 0.02, 0.08]
        julia = julia_trajectory(_stateful(lambda eta: julia_momentum(eta or 0.05, 0.8)), etas=etas)
        w = torch.nn.Parameter(torch.tensor(X0))
        sgd = torch.optim.SGD([w], lr=0.05, momentum=0.8)
        for eta, g in zip(etas, GRADS, strict=True):
            sgd.param_groups[0]["lr"] = eta
            w.grad = torch.tensor(g)
            sgd.step()
        assert not np.allclose(w.detach().numpy(), julia[-1], rtol=1e-6)


class TestSpecs:
    def test_exact_classes_are_used_where_torch_differs(self):
        """Momentum, Nesterov and AdamW(couple=false) use the exact rule classes."""
        p = [torch.nn.Parameter(torch.zeros(1))]
        assert isinstance(optimizer_from_spec({"rule": "Momentum"}, p), exact_rules.Momentum)
        assert isinstance(optimizer_from_spec({"rule": "Nesterov"}, p), exact_rules.Nesterov)
        adamw = optimizer_from_spec({"rule": "AdamW", "couple": False}, p)
        assert isinstance(adamw, exact_rules.DecoupledAdamW)
        assert type(optimizer_from_spec({"rule": "AdamW"}, p)) is torch.optim.AdamW

    def test_defaults_are_optimisers_jl_defaults(self):
        """A rule without hyperparameters takes Optimisers.jl's defaults."""
        p = [torch.nn.Parameter(torch.zeros(1))]
        adam = optimizer_from_spec({"rule": "Adam"}, p).param_groups[0]
        assert (adam["lr"], adam["betas"], adam["eps"]) == (0.001, (0.9, 0.999), 1e-8)
        assert optimizer_from_spec({"rule": "Descent"}, p).param_groups[0]["lr"] == 0.1
        momentum = optimizer_from_spec({"rule": "Momentum"}, p).param_groups[0]
        assert (momentum["lr"], momentum["rho"]) == (0.01, 0.9)

    def test_greek_names_and_old_capitalisation(self):
        """Greek hyperparameter names and the deprecated ADAM spelling are understood."""
        p = [torch.nn.Parameter(torch.zeros(1))]
        group = optimizer_from_spec({"rule": "ADAM", "η": 0.3, "β": (0.5, 0.6), "ϵ": 1e-3}, p)
        assert type(group) is torch.optim.Adam
        g = group.param_groups[0]
        assert (g["lr"], g["betas"], g["eps"]) == (0.3, (0.5, 0.6), 1e-3)

    def test_torch_optimizer_passes_through(self):
        """A ready torch optimiser is returned as it is."""
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        assert optimizer_from_spec(opt, []) is opt

    def test_unknown_rule_lists_supported_rules(self):
        """An unknown rule is an UnknownOptimizerError naming every supported rule."""
        with pytest.raises(UnknownOptimizerError) as info:
            optimizer_from_spec({"rule": "Lion"}, [torch.nn.Parameter(torch.zeros(1))])
        for name in supported_rules():
            assert name in str(info.value)
        assert isinstance(info.value, ValueError)

    def test_unknown_hyperparameter_lists_accepted_ones(self):
        """A misspelt hyperparameter is refused with the rule's real ones."""
        with pytest.raises(UnknownOptimizerError, match="eta, rho"):
            optimizer_from_spec({"rule": "Momentum", "momentum": 0.9}, [])

    def test_negative_learning_rate_is_refused(self):
        """A negative η is refused, as Optimisers.jl refuses it."""
        with pytest.raises(UnknownOptimizerError, match="negative"):
            optimizer_from_spec({"rule": "Adam", "eta": -1.0}, [])

    def test_missing_rule_is_an_error(self):
        """A spec without 'rule' says what a spec looks like."""
        with pytest.raises(UnknownOptimizerError, match="'rule'"):
            optimizer_from_spec({"eta": 0.1}, [])
