"""Learning-rate schedules described by plain dicts.

A schedule scales each parameter group's learning rate ``η`` (the ``eta`` of
the optimiser spec) by a factor ``f(t)``, where ``t = 0, 1, 2, ...`` counts the
optimiser steps taken so far (``fit`` advances it once per batch)::

    {"schedule": "step", "step_size": 100, "gamma": 0.1}
        f(t) = gamma ** floor(t / step_size)
    {"schedule": "cosine", "steps": 1000, "min_factor": 0.0}
        f(t) = m + (1 - m) (1 + cos(π min(t, steps) / steps)) / 2
    {"schedule": "onecycle", "steps": 1000, "pct_start": 0.25, "div": 25, "divfinal": 1e5}
        rises from 1/div to 1 over the first w = ceil(pct_start steps) steps
        (half a cosine), then falls to 1/divfinal by step ``steps`` (half a cosine);
        η is the peak. Names and defaults as FluxTraining's ``onecycle``.
    {"schedule": "warmup", "steps": 100, "then": {...}}
        f(t) = (t + 1) / steps for t < steps, then the ``then`` schedule
        (default: constant 1) counted from 0 again.
    {"schedule": "constant"}
        f(t) = 1

The result is an ordinary ``torch.optim.lr_scheduler.LambdaLR``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import UnknownScheduleError

__all__ = ["schedule_factor", "schedule_from_spec", "supported_schedules"]

Factor = Callable[[int], float]

# schedule name -> (required keys, defaults of the optional keys)
_SCHEDULES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "constant": ((), {}),
    "step": (("step_size",), {"gamma": 0.1}),
    "cosine": (("steps",), {"min_factor": 0.0}),
    "onecycle": (("steps",), {"pct_start": 0.25, "div": 25.0, "divfinal": 1e5}),
    "warmup": (("steps",), {"then": None}),
}


def supported_schedules() -> tuple[str, ...]:
    """supported_schedules() -> ("constant", ...): the names ``schedule_from_spec`` takes."""
    return tuple(sorted(_SCHEDULES))


def _half_cosine(start: float, end: float, fraction: float) -> float:
    """From ``start`` (fraction 0) to ``end`` (fraction 1) along half a cosine."""
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


def _settings(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    name = spec.get("schedule")
    if not isinstance(name, str) or name.lower().replace("-", "").replace("_", "") not in (
        _SCHEDULES
    ):
        raise UnknownScheduleError(
            f"schedule_from_spec: unknown schedule {name!r} in {dict(spec)!r}. Supported "
            f"schedules: {', '.join(supported_schedules())}."
        )
    name = name.lower().replace("-", "").replace("_", "")
    required, optional = _SCHEDULES[name]
    given = {k: v for k, v in spec.items() if k != "schedule"}
    unknown = set(given) - set(required) - set(optional)
    missing = [k for k in required if k not in given]
    if unknown or missing:
        raise UnknownScheduleError(
            f"schedule_from_spec: the {name} schedule takes {', '.join(required + tuple(optional))}"
            f" ({', '.join(required) or 'none'} required); "
            + (f"unknown: {', '.join(sorted(unknown))}. " if unknown else "")
            + (f"missing: {', '.join(missing)}." if missing else "")
        )
    settings = {**optional, **given}
    for key, value in settings.items():
        if key == "then":
            continue
        valid = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in ("steps", "step_size"):
            valid = valid and float(value).is_integer() and value >= 1
        if not valid:
            kind = (
                "a positive whole number of steps" if key in ("steps", "step_size") else "a number"
            )
            raise UnknownScheduleError(
                f"schedule_from_spec: {name}: {key} must be {kind}, got {value!r}."
            )
    return name, settings


def schedule_factor(spec: Mapping[str, Any]) -> Factor:
    """schedule_factor(spec) -> f: the factor ``f(t)`` that scales η at step ``t`` (from 0).

    Raises:
        UnknownScheduleError: unknown schedule name, unknown or missing settings.
    """
    if not isinstance(spec, Mapping):
        raise UnknownScheduleError(
            f"schedule_from_spec: expected a dict such as {{'schedule': 'cosine', "
            f"'steps': 1000}}, got {type(spec).__name__}."
        )
    name, s = _settings(spec)
    if name == "constant":
        return lambda t: 1.0
    if name == "step":
        step_size, gamma = int(s["step_size"]), float(s["gamma"])
        return lambda t: gamma ** (t // step_size)
    if name == "cosine":
        steps, low = int(s["steps"]), float(s["min_factor"])
        return lambda t: _half_cosine(1.0, low, min(t, steps) / steps)
    if name == "onecycle":
        steps = int(s["steps"])
        rise = max(1, math.ceil(float(s["pct_start"]) * steps))
        start, end = 1 / float(s["div"]), 1 / float(s["divfinal"])

        def onecycle(t: int) -> float:
            if t < rise:
                return _half_cosine(start, 1.0, t / rise)
            fall = max(1, steps - rise)
            return _half_cosine(1.0, end, min(t - rise, fall) / fall)

        return onecycle
    # warmup
    steps = int(s["steps"])
    then = schedule_factor(s["then"]) if s["then"] is not None else (lambda t: 1.0)
    return lambda t: (t + 1) / steps if t < steps else then(t - steps)


def schedule_from_spec(
    spec: Mapping[str, Any] | torch.optim.lr_scheduler.LRScheduler,
    optimizer: torch.optim.Optimizer,
) -> torch.optim.lr_scheduler.LRScheduler:
    """schedule_from_spec(spec, optimizer) -> LRScheduler

    A scheduler that sets each group's learning rate to ``η · f(t)``, with
    ``f`` as :func:`schedule_factor` describes; call its ``step()`` after each
    optimiser step. A torch scheduler passed as ``spec`` is returned unchanged.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> sched = schedule_from_spec({"schedule": "step", "step_size": 2, "gamma": 0.5}, opt)
    >>> lrs = []
    >>> for _ in range(5):
    ...     lrs.append(round(opt.param_groups[0]["lr"], 4))
    ...     opt.step()
    ...     sched.step()
    >>> lrs
    [0.1, 0.1, 0.05, 0.05, 0.025]

    Raises:
        UnknownScheduleError: unknown schedule name, unknown or missing settings.
    """
    if isinstance(spec, torch.optim.lr_scheduler.LRScheduler):
        return spec
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(spec))
