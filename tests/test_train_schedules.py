"""Learning-rate schedules: the value of η at chosen steps."""

from __future__ import annotations

import math

import pytest
import torch

from torchbridge.errors import UnknownScheduleError
from torchbridge.train import optimizer_from_spec, schedule_from_spec, supported_schedules
from torchbridge.train.schedules import schedule_factor


def lrs(spec, steps, eta=0.1):
    """The learning rate used by each of the first ``steps`` optimiser steps."""
    w = torch.nn.Parameter(torch.zeros(1))
    opt = optimizer_from_spec({"rule": "Descent", "eta": eta}, [w])
    sched = schedule_from_spec(spec, opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        w.grad = torch.zeros(1)
        opt.step()
        sched.step()
    return out


class TestValues:
    def test_step(self):
        """The step schedule multiplies η by gamma every step_size steps."""
        got = lrs({"schedule": "step", "step_size": 3, "gamma": 0.5}, 8)
        assert got == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025])

    def test_cosine(self):
        """Cosine goes from η to min_factor·η over `steps`, half-way at the midpoint, then stays."""
        got = lrs({"schedule": "cosine", "steps": 4, "min_factor": 0.1}, 7)
        assert got[0] == pytest.approx(0.1)
        assert got[2] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))
        assert got[1] == pytest.approx(0.1 * (0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2))
        assert got[4:] == pytest.approx([0.01, 0.01, 0.01])

    def test_onecycle(self):
        """One-cycle starts at η/div, peaks at η after pct_start, ends at η/divfinal."""
        spec = {"schedule": "onecycle", "steps": 8, "pct_start": 0.25, "div": 10, "divfinal": 100}
        got = lrs(spec, 10)
        assert got[0] == pytest.approx(0.01)  # η / div
        assert got[1] == pytest.approx(0.01 + (0.1 - 0.01) * 0.5)  # half-way up
        assert got[2] == pytest.approx(0.1)  # peak after ceil(0.25 * 8) = 2 steps
        assert got[5] == pytest.approx(0.001 + (0.1 - 0.001) * 0.5)  # half-way down
        assert got[8:] == pytest.approx([0.001, 0.001])  # η / divfinal from `steps` on
        assert max(got) == pytest.approx(0.1)

    def test_warmup_then_cosine(self):
        """Warm-up rises linearly to η over `steps`, then hands over to the `then` schedule."""
        spec = {"schedule": "warmup", "steps": 4, "then": {"schedule": "cosine", "steps": 2}}
        got = lrs(spec, 8)
        assert got[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
        assert got[4:] == pytest.approx([0.1, 0.05, 0.0, 0.0])

    def test_warmup_alone_holds_eta(self):
        """Warm-up without `then` stays at η after warming up."""
        assert lrs({"schedule": "warmup", "steps": 2}, 4) == pytest.approx([0.05, 0.1, 0.1, 0.1])

    def test_scales_every_param_group(self):
        """Each parameter group keeps its own η, scaled by the same factor."""
        a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 1.0}])
        sched = schedule_from_spec({"schedule": "step", "step_size": 1, "gamma": 0.5}, opt)
        opt.step()
        sched.step()
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.5])


class TestErrors:
    def test_unknown_schedule_lists_supported(self):
        """An unknown schedule is an UnknownScheduleError listing every supported one."""
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        with pytest.raises(UnknownScheduleError) as info:
            schedule_from_spec({"schedule": "exponential"}, opt)
        for name in supported_schedules():
            assert name in str(info.value)

    def test_missing_and_unknown_settings(self):
        """Missing required settings and unknown ones are both named."""
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        with pytest.raises(UnknownScheduleError, match="missing: steps"):
            schedule_from_spec({"schedule": "cosine"}, opt)
        with pytest.raises(UnknownScheduleError, match="unknown: T_max"):
            schedule_from_spec({"schedule": "cosine", "steps": 3, "T_max": 3}, opt)

    def test_steps_must_be_positive(self):
        """A schedule over zero steps is refused."""
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        with pytest.raises(UnknownScheduleError, match="positive"):
            schedule_from_spec({"schedule": "onecycle", "steps": 0}, opt)


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"schedule": "cosine", "steps": None}, "steps must be a positive whole number"),
        ({"schedule": "step", "step_size": "ten"}, "step_size must be a positive whole number"),
        ({"schedule": "step", "step_size": 2.5}, "step_size must be a positive whole number"),
        ({"schedule": "cosine", "steps": 10, "min_factor": "low"}, "min_factor must be a number"),
        ({"schedule": "onecycle", "steps": 10, "div": True}, "div must be a number"),
    ],
)
def test_settings_of_the_wrong_kind_are_typed_errors(spec, match):
    """A setting of the wrong kind is an UnknownScheduleError naming it, not a bare TypeError."""
    with pytest.raises(UnknownScheduleError, match=match):
        schedule_factor(spec)
