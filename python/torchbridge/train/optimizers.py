"""Optimiser rules named as in Optimisers.jl/Flux, built as torch optimisers.

A rule is described by a plain dict, the same from Julia and from Python::

    {"rule": "Adam", "eta": 1e-3, "beta": [0.9, 0.999], "epsilon": 1e-8}

Hyperparameters use Optimisers.jl's keyword names (``eta``, ``rho``, ``beta``,
``epsilon``, ``lambda``, ``centred``, ``couple``) or their Greek spellings
(``η``, ``ρ``, ``β``, ``ϵ``, ``λ``); missing ones take Optimisers.jl's defaults.
Every rule performs exactly the Optimisers.jl update: where a ``torch.optim``
class computes the same thing it is used, otherwise a class from
:mod:`torchbridge.train.rules` is (see the table in ``docs/training.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UnknownOptimizerError
from . import rules

__all__ = ["optimizer_from_spec", "supported_rules"]

_GREEK = {"η": "eta", "ρ": "rho", "β": "beta", "ϵ": "epsilon", "ε": "epsilon", "λ": "lambda"}


@dataclass(frozen=True)
class _Rule:
    defaults: dict[str, Any]  # Optimisers.jl's defaults, by keyword name
    build: Callable[[Iterable, dict[str, Any]], torch.optim.Optimizer]
    exact_in_torch: bool  # a torch.optim class computes the same update


def _betas(value: Any) -> tuple[float, float]:
    b1, b2 = (float(b) for b in value)
    return b1, b2


def _adamw(params: Iterable, h: dict[str, Any]) -> torch.optim.Optimizer:
    betas, eps, decay = _betas(h["beta"]), float(h["epsilon"]), float(h["lambda"])
    if h["couple"]:
        # couple=true is x -= η (adam + λ x): torch's AdamW exactly.
        return torch.optim.AdamW(
            params, lr=float(h["eta"]), betas=betas, eps=eps, weight_decay=decay
        )
    return rules.DecoupledAdamW(
        params, lr=float(h["eta"]), betas=betas, eps=eps, weight_decay=decay
    )


_RULES: dict[str, _Rule] = {
    "Descent": _Rule(
        {"eta": 0.1},
        lambda p, h: torch.optim.SGD(p, lr=float(h["eta"])),
        True,
    ),
    "Momentum": _Rule(
        {"eta": 0.01, "rho": 0.9},
        lambda p, h: rules.Momentum(p, lr=float(h["eta"]), rho=float(h["rho"])),
        False,
    ),
    "Nesterov": _Rule(
        {"eta": 0.001, "rho": 0.9},
        lambda p, h: rules.Nesterov(p, lr=float(h["eta"]), rho=float(h["rho"])),
        False,
    ),
    "RMSProp": _Rule(
        {"eta": 0.001, "rho": 0.9, "epsilon": 1e-8, "centred": False},
        lambda p, h: torch.optim.RMSprop(
            p,
            lr=float(h["eta"]),
            alpha=float(h["rho"]),
            eps=float(h["epsilon"]),
            centered=bool(h["centred"]),
        ),
        True,
    ),
    "Adam": _Rule(
        {"eta": 0.001, "beta": (0.9, 0.999), "epsilon": 1e-8},
        lambda p, h: torch.optim.Adam(
            p, lr=float(h["eta"]), betas=_betas(h["beta"]), eps=float(h["epsilon"])
        ),
        True,
    ),
    "AdamW": _Rule(
        {"eta": 0.001, "beta": (0.9, 0.999), "lambda": 0.0, "epsilon": 1e-8, "couple": True},
        _adamw,
        True,  # couple=true; couple=false uses rules.DecoupledAdamW
    ),
    "AdaGrad": _Rule(
        {"eta": 0.1, "epsilon": 1e-8},
        # Optimisers.jl starts the accumulator at ϵ, not 0.
        lambda p, h: torch.optim.Adagrad(
            p,
            lr=float(h["eta"]),
            eps=float(h["epsilon"]),
            initial_accumulator_value=float(h["epsilon"]),
        ),
        True,
    ),
}

# Optimisers.jl's deprecated capitalisations
_ALIASES = {"ADAM": "Adam", "ADAMW": "AdamW", "ADAGrad": "AdaGrad"}


def supported_rules() -> tuple[str, ...]:
    """supported_rules() -> ("AdaGrad", "Adam", ...): the names ``optimizer_from_spec`` takes."""
    return tuple(sorted(_RULES))


def _rule_name(spec: Mapping[str, Any]) -> str:
    name = spec.get("rule")
    if not isinstance(name, str):
        raise UnknownOptimizerError(
            f"optimizer_from_spec: the spec needs a 'rule' naming an Optimisers.jl rule, got "
            f"{dict(spec)!r}. Supported rules: {', '.join(supported_rules())}."
        )
    name = _ALIASES.get(name, name)
    by_lower = {r.lower(): r for r in _RULES}
    if name.lower() not in by_lower:
        raise UnknownOptimizerError(
            f"optimizer_from_spec: unknown rule {name!r}. Supported rules: "
            f"{', '.join(supported_rules())}."
        )
    return by_lower[name.lower()]


def _hyperparameters(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    rule = _RULES[name]
    given: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "rule":
            continue
        key = _GREEK.get(key, key)
        if key == "centered":
            key = "centred"
        if key not in rule.defaults:
            raise UnknownOptimizerError(
                f"optimizer_from_spec: {name} has no hyperparameter {key!r}; it takes "
                f"{', '.join(rule.defaults)}."
            )
        given[key] = value
    hyper = {**rule.defaults, **given}
    if float(hyper["eta"]) < 0:
        raise UnknownOptimizerError(
            f"optimizer_from_spec: {name}: the learning rate cannot be negative, got "
            f"eta={hyper['eta']}."
        )
    return hyper


def optimizer_from_spec(
    spec: Mapping[str, Any] | torch.optim.Optimizer, params: Iterable
) -> torch.optim.Optimizer:
    """optimizer_from_spec(spec, params) -> torch.optim.Optimizer

    Build the torch optimiser that performs the Optimisers.jl rule ``spec``
    describes, over ``params`` (an iterable of tensors or of param-group dicts).
    A ready torch optimiser passed as ``spec`` is returned unchanged.

    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(2))
    >>> opt = optimizer_from_spec({"rule": "Momentum", "eta": 0.1, "rho": 0.9}, [w])
    >>> w.grad = torch.ones(2); opt.step(); w
    Parameter containing:
    tensor([0.9000, 0.9000], requires_grad=True)

    Raises:
        UnknownOptimizerError: the rule or one of its hyperparameters is unknown
            (the message lists what is supported), or the learning rate is negative.
    """
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if not isinstance(spec, Mapping):
        raise UnknownOptimizerError(
            f"optimizer_from_spec: expected a dict such as {{'rule': 'Adam', 'eta': 1e-3}} "
            f"or a torch optimizer, got {type(spec).__name__}."
        )
    name = _rule_name(spec)
    return _RULES[name].build(params, _hyperparameters(name, spec))
