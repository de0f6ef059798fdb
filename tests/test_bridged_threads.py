"""Forward and pullback from several Python threads at once."""

from __future__ import annotations

import threading

import numpy as np
import torch

import torchbridge
from models import mlp
from torchbridge import memory

THREADS = 4
STEPS = 25


def _batches(seed: int):
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((8, 6)).astype(np.float32),
            rng.standard_normal((8, 4)).astype(np.float32),
        )
        for _ in range(STEPS)
    ]


def _step(bm, x, cot):
    (y,), pullback = bm.forward(x)
    (gx,) = pullback(cot)
    return y.clone(), gx.clone(), [g.clone() for g in bm.grads]


def _run_threads(target, n=THREADS):
    errors = []

    def wrapped(i):
        try:
            target(i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_separate_models_in_parallel_equal_serial():
    """Four threads, each with its own model, get exactly the serial results."""
    torch.manual_seed(0)
    base_model = mlp(torch.float32)
    data = [_batches(i) for i in range(THREADS)]

    def fresh():
        m = mlp(torch.float32)
        m.load_state_dict(base_model.state_dict())
        return torchbridge.bridge(m)

    serial = []
    for i in range(THREADS):
        bm = fresh()
        serial.append([_step(bm, x, c) for x, c in data[i]])
        bm.close()

    baseline = memory.snapshot()
    models = [fresh() for _ in range(THREADS)]
    parallel = [None] * THREADS

    def work(i):
        parallel[i] = [_step(models[i], x, c) for x, c in data[i]]

    _run_threads(work)
    for m in models:
        m.close()
    memory.assert_baseline(baseline)
    for s_run, p_run in zip(serial, parallel):
        for (sy, sg, sp), (py, pg, pp) in zip(s_run, p_run):
            torch.testing.assert_close(py, sy, rtol=0, atol=0)
            torch.testing.assert_close(pg, sg, rtol=0, atol=0)
            for a, b in zip(pp, sp):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_shared_model_under_its_lock_equals_serial():
    """Four threads sharing one model, each step under model.lock, match the same steps run serially."""
    model = mlp(torch.float32)
    bm = torchbridge.bridge(model)
    data = [_batches(10 + i) for i in range(THREADS)]
    serial = {(i, k): _step(bm, x, c) for i in range(THREADS) for k, (x, c) in enumerate(data[i])}
    baseline = memory.snapshot()
    results = {}

    def work(i):
        for k, (x, c) in enumerate(data[i]):
            with bm.lock:
                results[(i, k)] = _step(bm, x, c)

    _run_threads(work)
    memory.assert_baseline(baseline)
    assert results.keys() == serial.keys()
    for key, (sy, sg, sp) in serial.items():
        py, pg, pp = results[key]
        torch.testing.assert_close(py, sy, rtol=0, atol=0)
        torch.testing.assert_close(pg, sg, rtol=0, atol=0)
        for a, b in zip(pp, sp):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    bm.close()


def test_ledger_consistent_under_concurrent_forwards():
    """Many threads creating and releasing pullbacks leave the ledger exactly at baseline."""
    bm = torchbridge.bridge(torch.nn.Linear(6, 4))
    x = np.ones((2, 6), np.float32)
    baseline = memory.snapshot()

    def work(i):
        for k in range(200):
            _, pullback = bm.forward(x)
            if k % 2:
                pullback.release()
            else:
                pullback(np.ones((2, 4), np.float32))

    _run_threads(work, n=8)
    memory.assert_baseline(baseline)
    bm.close()
