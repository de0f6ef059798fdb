"""Reusable pullbacks: called any number of times inside scope(reusable=True), freed by the scope."""

from __future__ import annotations

import pytest
import torch

import torchbridge
from torchbridge import memory
from torchbridge.errors import PullbackReleasedError


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
    ).double()


def test_one_shot_outside_a_reusable_scope_says_how():
    """A second call of an ordinary pullback is refused, and the message names the reusable scope."""
    with torchbridge.bridge(model()) as bm:
        _, pb = bm.forward(torch.randn(5, 3, dtype=torch.float64))
        pb(torch.ones(5, 2, dtype=torch.float64))
        with pytest.raises(PullbackReleasedError, match="reusable=True"):
            pb(torch.ones(5, 2, dtype=torch.float64))


def test_jacobian_row_by_row_matches_autograd():
    """Each call returns the input and parameter gradients of its own cotangent: a Jacobian, row by row."""
    m = model()
    x = torch.randn(2, 3, dtype=torch.float64)
    reference = torch.autograd.functional.jacobian(lambda x: m(x), x)  # (2, 2, 2, 3)
    baseline = memory.snapshot()
    with torchbridge.bridge(m) as bm:
        with memory.scope(reusable=True):
            (y,), pb = bm.forward(x)
            assert pb.reusable
            for i in range(2):
                for j in range(2):
                    cot = torch.zeros_like(y)
                    cot[i, j] = 1
                    (gx,) = pb(cot)
                    torch.testing.assert_close(gx, reference[i, j])
                    # the parameter gradients are this call's alone, not a sum over calls
                    w = m[2].weight
                    expected = torch.autograd.grad(m(x)[i, j], w)[0]
                    torch.testing.assert_close(bm.grads[2], expected)
            assert pb.live
        assert not pb.live  # the scope freed the graph
    memory.assert_baseline(baseline)


def test_innermost_scope_decides():
    """A one-shot scope nested inside a reusable one makes one-shot pullbacks."""
    with torchbridge.bridge(model()) as bm, memory.scope(reusable=True):
        with memory.scope():
            _, pb = bm.forward(torch.randn(1, 3, dtype=torch.float64))
        assert not pb.reusable and not pb.live
        _, pb2 = bm.forward(torch.randn(1, 3, dtype=torch.float64))
        assert pb2.reusable


def test_release_ends_a_reusable_pullback():
    """release() frees a reusable pullback at once; a later call is refused."""
    with torchbridge.bridge(model()) as bm, memory.scope(reusable=True):
        _, pb = bm.forward(torch.randn(1, 3, dtype=torch.float64))
        pb(torch.ones(1, 2, dtype=torch.float64))
        assert pb.release()
        with pytest.raises(PullbackReleasedError):
            pb(torch.ones(1, 2, dtype=torch.float64))
