"""Zero-copy, ownership and the memory ledger: every buffer has one owner and one release point."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

import torchbridge
from dlpack_producer import CountingProducer
from models import mlp
from torchbridge import memory
from torchbridge.errors import LeakError


@pytest.fixture
def no_gc():
    """Disable the cyclic collector so that nothing below can be released by it."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


class TestZeroCopy:
    def test_params_and_grads_alias_the_module(self):
        """params and grads are the module's own memory: writes through params reach the module."""
        model = mlp(torch.float32)
        bm = torchbridge.bridge(model)
        for (name, p), alias, g in zip(model.named_parameters(), bm.params, bm.grads):
            assert alias.data_ptr() == p.data_ptr(), name
            assert p.grad is g
        bm.params[0][0, 0] = 123.0  # what Optimisers.update! does from Julia
        assert model[0].weight[0, 0].item() == 123.0
        bm.close()

    def test_grad_buffers_never_move(self):
        """Gradient buffers keep their memory across steps, so the foreign side shares them once."""
        bm = torchbridge.bridge(mlp(torch.float32))
        pointers = [g.data_ptr() for g in bm.grads]
        for _ in range(3):
            (y,), pullback = bm.forward(np.random.randn(4, 6).astype(np.float32))
            pullback(np.ones((4, 4), np.float32))
            assert [g.data_ptr() for g in bm.grads] == pointers
        bm.close()

    def test_inputs_and_outputs_are_not_copied(self):
        """An identity model returns the caller's memory: input and output share one pointer."""
        bm = torchbridge.bridge(torch.nn.Identity())
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        (y,), pullback = bm.forward(x)
        assert y.data_ptr() == x.ctypes.data
        (gx,) = pullback(np.full((2, 3), 2.0, np.float32))
        torch.testing.assert_close(gx, torch.full((2, 3), 2.0))
        (y,), _ = bm.forward(x, grad=False)
        x[0, 0] = 99
        assert y[0, 0] == 99
        bm.close()

    def test_outputs_are_the_graph_outputs(self):
        """The returned outputs share memory with what the module produced (no copy out)."""
        model = mlp(torch.float32)
        seen = []
        model.register_forward_hook(lambda m, i, o: seen.append(o.data_ptr()))
        bm = torchbridge.bridge(model)
        (y,), pullback = bm.forward(torch.randn(2, 6))
        assert y.data_ptr() == seen[0]
        assert not y.requires_grad
        pullback.release()
        bm.close()


class TestDeleterRunsAtTheReleasePoint:
    def test_at_the_pullback(self, no_gc):
        """An imported buffer is released exactly once, when the pullback runs."""
        bm = torchbridge.bridge(mlp(torch.float32))
        producer = CountingProducer(np.random.randn(3, 6).astype(np.float32))
        (y,), pullback = bm.forward(producer)
        assert producer.deleted == 0
        pullback(torch.ones_like(y))
        assert producer.deleted == 1
        del y, pullback
        assert producer.deleted == 1
        bm.close()

    def test_at_release(self, no_gc):
        """release() frees the graph and the imported buffer at once, and only once."""
        bm = torchbridge.bridge(mlp(torch.float32))
        producer = CountingProducer(np.random.randn(3, 6).astype(np.float32))
        outputs, pullback = bm.forward(producer)
        assert pullback.release() is True
        assert producer.deleted == 1
        assert pullback.release() is False
        assert producer.deleted == 1
        bm.close()

    def test_at_the_end_of_a_scope(self, no_gc):
        """A scope releases the pullbacks created in it that never ran."""
        bm = torchbridge.bridge(mlp(torch.float32))
        producers = [CountingProducer(np.ones((2, 6), np.float32)) for _ in range(3)]
        kept = []
        with memory.scope():
            for p in producers:
                kept.append(bm.forward(p))
            assert [p.deleted for p in producers] == [0, 0, 0]
        assert [p.deleted for p in producers] == [1, 1, 1]
        assert not any(pb.live for _, pb in kept)
        bm.close()

    def test_at_close(self, no_gc):
        """Closing a model releases its live pullbacks."""
        bm = torchbridge.bridge(mlp(torch.float32))
        producer = CountingProducer(np.ones((2, 6), np.float32))
        _, pullback = bm.forward(producer)
        bm.close()
        assert producer.deleted == 1
        assert not pullback.live

    def test_after_a_failing_forward(self, no_gc):
        """A forward that raises lets go of the input at once, without waiting for the traceback to die."""

        class Boom(torch.nn.Module):
            def forward(self, x):
                x = x * 2  # a graph node that holds the input
                raise ValueError("boom")

        bm = torchbridge.bridge(Boom())
        producer = CountingProducer(np.ones(3, np.float32))
        with pytest.raises(ValueError, match="boom") as info:
            bm.forward(producer)
        assert producer.deleted == 1
        del info
        bm.close()


class TestLedger:
    def test_stats_count_pullbacks_buffers_and_bytes(self):
        """stats() counts live pullbacks, the buffers they hold and their bytes per device."""
        base = memory.stats()
        bm = torchbridge.bridge(torch.nn.Linear(4, 2))
        s = memory.stats()
        assert s.open_models == base.open_models + 1
        assert s.shared_buffers == base.shared_buffers + 4  # weight, bias and their grads
        assert s.shared_bytes["cpu"] - base.shared_bytes.get("cpu", 0) == 2 * (8 + 2) * 4
        _, pullback = bm.forward(np.ones((3, 4), np.float32))
        s = memory.stats()
        assert s.live_pullbacks == base.live_pullbacks + 1
        assert s.held_buffers == base.held_buffers + 2  # the input and the output
        assert s.held_bytes["cpu"] - base.held_bytes.get("cpu", 0) == (12 + 6) * 4
        pullback.release()
        bm.close()
        assert memory.stats() == base

    def test_assert_baseline_names_the_leak(self):
        """assert_baseline raises LeakError naming the counter that did not come back."""
        bm = torchbridge.bridge(torch.nn.Linear(4, 2))
        base = memory.snapshot()
        _, pullback = bm.forward(np.ones((3, 4), np.float32))
        with pytest.raises(LeakError, match="live_pullbacks: 0 -> 1"):
            memory.assert_baseline(base)
        pullback.release()
        memory.assert_baseline(base)
        bm.close()

    def test_dropped_pullback_is_counted_as_released_by_gc(self):
        """A pullback freed only by the collector is freed, but flagged in released_by_gc."""
        bm = torchbridge.bridge(torch.nn.Linear(4, 2))
        base = memory.snapshot()
        bm.forward(np.ones((3, 4), np.float32))  # pullback dropped on the floor
        after = memory.stats()
        assert after.live_pullbacks == base.live_pullbacks
        assert after.released_by_gc == base.released_by_gc + 1
        with pytest.raises(LeakError, match="released_by_gc"):
            memory.assert_baseline(base)
        memory.assert_baseline(base, include_gc=False)
        bm.close()

    def test_release_all(self):
        """release_all releases every live pullback."""
        bm = torchbridge.bridge(torch.nn.Linear(4, 2))
        pullbacks = [bm.forward(np.ones((1, 4), np.float32))[1] for _ in range(3)]
        assert memory.release_all() >= 3
        assert not any(p.live for p in pullbacks)
        bm.close()

    def test_nested_scopes_release_their_own(self):
        """An inner scope releases only what it created; the outer scope the rest."""
        bm = torchbridge.bridge(torch.nn.Linear(4, 2))
        x = np.ones((1, 4), np.float32)
        with memory.scope():
            _, outer = bm.forward(x)
            with memory.scope():
                _, inner = bm.forward(x)
            assert not inner.live and outer.live
        assert not outer.live
        bm.close()


def _rss_mb() -> float:
    psutil = pytest.importorskip("psutil")
    return psutil.Process().memory_info().rss / 2**20


class TestLeaks:
    """Long runs leave the ledger at its baseline and the process size flat.

    RSS tolerance: 20 MB over 1,000 steps of a model whose step moves ~10 KB;
    a leaked graph per step would cost well over that.
    """

    def test_thousand_steps(self):
        """1,000 forward/pullback steps leave the ledger at baseline and RSS flat."""
        bm = torchbridge.bridge(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()))
        x = np.random.randn(32, 64).astype(np.float32)
        cot = np.ones((32, 64), np.float32)
        for _ in range(50):  # warm the allocator up
            bm.forward(x)[1](cot)
        with memory.expect_baseline():
            rss = _rss_mb()
            for _ in range(1000):
                _, pullback = bm.forward(x)
                pullback(cot)
            assert _rss_mb() - rss < 20
        bm.close()

    def test_thousand_forwards_never_pulled_back(self):
        """1,000 forwards whose pullback is never called, inside scope(), hold nothing afterwards."""
        bm = torchbridge.bridge(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()))
        x = np.random.randn(32, 64).astype(np.float32)
        kept = []
        with memory.expect_baseline():
            rss = _rss_mb()
            with memory.scope():
                for _ in range(1000):
                    kept.append(bm.forward(x)[1])
                assert memory.stats().live_pullbacks >= 1000
            kept.clear()
            assert _rss_mb() - rss < 20
        bm.close()

    def test_hundred_failing_forwards(self):
        """100 forwards that raise leave the ledger at baseline."""

        class Flaky(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(8, 8)

            def forward(self, x):
                self.lin(x)
                raise RuntimeError("the model failed")

        bm = torchbridge.bridge(Flaky())
        with memory.expect_baseline():
            for _ in range(100):
                with pytest.raises(RuntimeError, match="the model failed"):
                    bm.forward(np.ones((4, 8), np.float32))
        bm.close()
