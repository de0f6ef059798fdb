"""torch optimisers that perform the Optimisers.jl update exactly where torch.optim does not.

NOTE [eta inside the state]
Optimisers.jl's ``Momentum`` and ``Nesterov`` keep a velocity that already
contains the learning rate (``v = ρ v + η g``); torch's SGD keeps one that does
not (``b = μ b + g``, then ``x -= lr b``). The two agree only while the learning
rate never changes. Under a schedule the first follows the Julia rule and the
second does not, so these rules are implemented here, with the learning rate in
``param_groups[i]["lr"]`` so that every torch scheduler can drive them.

``AdamW(couple=false)`` subtracts ``λ x`` unscaled by the learning rate; torch's
AdamW always scales it by ``lr``. It is implemented here for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["DecoupledAdamW", "Momentum", "Nesterov"]


def _check_lr(lr: float, rule: str) -> None:
    if lr < 0:
        raise ValueError(f"{rule}: the learning rate cannot be negative, got eta={lr}")


class _PerParameterRule(torch.optim.Optimizer):
    """A torch optimiser whose step applies :meth:`update` to each parameter with a gradient."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, p.grad, self.state[p], group)
        return loss

    def update(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


class Momentum(_PerParameterRule):
    """Momentum(params, lr=0.01, rho=0.9) -> Optimizer

    Optimisers.jl's ``Momentum(η, ρ)``, per parameter ``x`` with gradient ``g``::

        v = ρ v + η g        (v starts at 0)
        x = x - v
    """

    def __init__(self, params: Iterable, lr: float = 0.01, rho: float = 0.9):
        _check_lr(lr, "Momentum")
        super().__init__(params, {"lr": lr, "rho": rho})

    def update(self, p, g, state, group):
        if "velocity" not in state:
            state["velocity"] = torch.zeros_like(p)
        velocity = state["velocity"]
        velocity.mul_(group["rho"]).add_(g, alpha=group["lr"])
        p.sub_(velocity)


class Nesterov(_PerParameterRule):
    """Nesterov(params, lr=0.001, rho=0.9) -> Optimizer

    Optimisers.jl's ``Nesterov(η, ρ)``, per parameter ``x`` with gradient ``g``::

        Δ = -ρ² v + (1 + ρ) η g     (with the velocity v of the previous step)
        v = ρ v - η g               (v starts at 0)
        x = x - Δ
    """

    def __init__(self, params: Iterable, lr: float = 0.001, rho: float = 0.9):
        _check_lr(lr, "Nesterov")
        super().__init__(params, {"lr": lr, "rho": rho})

    def update(self, p, g, state, group):
        eta, rho = group["lr"], group["rho"]
        if "velocity" not in state:
            state["velocity"] = torch.zeros_like(p)
        velocity = state["velocity"]
        delta = velocity * (-(rho**2)) + g * ((1 + rho) * eta)
        velocity.mul_(rho).sub_(g, alpha=eta)
        p.sub_(delta)


class DecoupledAdamW(_PerParameterRule):
    """DecoupledAdamW(params, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0) -> Optimizer

    Optimisers.jl's ``AdamW(η, β, λ, ϵ; couple=false)``: Adam with learning
    rate ``η`` plus a weight decay that the learning rate does not scale::

        m = β1 m + (1 - β1) g
        v = β2 v + (1 - β2) g²
        x = x - η (m / (1 - β1ᵗ)) / (sqrt(v / (1 - β2ᵗ)) + ϵ) - λ x
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        _check_lr(lr, "AdamW")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def update(self, p, g, state, group):
        eta, (beta1, beta2) = group["lr"], group["betas"]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
        adam = (m / (1 - beta1**t)).div_(denom)
        # the decay uses x before this step's update, as in Optimisers.jl
        p.sub_(p * group["weight_decay"] + adam * eta)
