"""Benchmarks of the core bridge: exchange, forward+pullback against plain torch, memory.

Every figure is measured in one run, as a ratio or difference against plain
torch in the same process, interleaved so that load on a shared machine hits
both sides alike.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time

import numpy as np
import torch
from timing import median_time

import torchbridge
from torchbridge import memory
from torchbridge.exchange import to_torch

SIZES = {"1KB": 2**10, "1MB": 2**20, "100MB": 100 * 2**20, "1GB": 2**30}


def exchange() -> dict:
    """Seconds to view an array in (numpy -> torch) and out (torch -> numpy), and to copy it."""
    results = {}
    for label, nbytes in SIZES.items():
        array = np.ones(nbytes // 4, dtype=np.float32)
        tensor = to_torch(array)
        assert tensor.data_ptr() == array.ctypes.data  # zero-copy, or the figure means nothing
        reps = 2000 if nbytes <= 2**20 else 200
        results[f"exchange_in_{label}_us"] = (
            median_time(lambda array=array: to_torch(array), reps) * 1e6
        )
        results[f"exchange_out_{label}_us"] = (
            median_time(lambda tensor=tensor: np.from_dlpack(tensor), reps) * 1e6
        )
        copy_reps = 200 if nbytes <= 2**20 else 3
        results[f"copy_{label}_us"] = (
            median_time(lambda tensor=tensor: tensor.clone(), copy_reps) * 1e6
        )
        del array, tensor
        gc.collect()
    results["exchange_1GB_over_1KB"] = results["exchange_in_1GB_us"] / results["exchange_in_1KB_us"]
    return results


def resnet18_step(batch: int = 8, size: int = 224, reps: int = 10) -> dict:
    """Bridge forward+pullback over plain torch forward+backward, timm resnet18, train mode."""
    import timm

    torch.manual_seed(0)
    plain = timm.create_model("resnet18", pretrained=False).train()
    bridged_module = copy.deepcopy(plain)
    bm = torchbridge.bridge(bridged_module)
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    x_torch = torch.from_numpy(x)
    cot = np.ones((batch, 1000), np.float32)
    cot_torch = torch.from_numpy(cot)

    def plain_step():
        plain.zero_grad(set_to_none=True)
        plain(x_torch).backward(cot_torch)

    def bridge_step():
        _, pullback = bm.forward(x, input_grads=False)
        pullback(cot)

    plain_step()
    bridge_step()
    plain_times, bridge_times = [], []
    for rep in range(reps):
        # ABBA order, so that whatever the first of a pair pays (allocator,
        # caches) is paid by both sides equally often
        order = [(plain_step, plain_times), (bridge_step, bridge_times)]
        for step, times in order if rep % 2 == 0 else order[::-1]:
            times.append(median_time(step, 1))
    bm.close()
    p, b = statistics.median(plain_times), statistics.median(bridge_times)
    return {
        "torch_resnet18_step_ms": p * 1e3,
        "bridge_resnet18_step_ms": b * 1e3,
        "bridge_over_torch_resnet18": b / p,
    }


def tiny_mlp_overhead(steps: int = 3000) -> dict:
    """Fixed per-call cost of the bridge: median (bridge step - plain step) on a tiny MLP."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    bm = torchbridge.bridge(copy.deepcopy(plain))
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    cot = np.ones((2, 4), np.float32)
    x_torch, cot_torch = torch.from_numpy(x), torch.from_numpy(cot)

    def plain_step():
        plain.zero_grad(set_to_none=True)
        plain(x_torch).backward(cot_torch)

    def bridge_step():
        _, pullback = bm.forward(x, input_grads=False)
        pullback(cot)

    for _ in range(300):
        plain_step()
        bridge_step()
    diffs, plain_times = [], []
    clock = time.perf_counter
    for _ in range(steps):
        t0 = clock()
        plain_step()
        t1 = clock()
        bridge_step()
        t2 = clock()
        plain_times.append(t1 - t0)
        diffs.append((t2 - t1) - (t1 - t0))
    bm.close()
    return {
        "torch_tiny_mlp_step_us": statistics.median(plain_times) * 1e6,
        "overhead_us_tiny_mlp": statistics.median(diffs) * 1e6,
    }


def memory_after_steps(steps: int = 1000) -> dict:
    """Ledger and process size after many steps, against the baseline before them."""
    import psutil

    process = psutil.Process()
    bm = torchbridge.bridge(torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU()))
    x = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    cot = np.ones((64, 256), np.float32)
    for _ in range(50):
        bm.forward(x)[1](cot)
    gc.collect()
    baseline = memory.snapshot()
    rss_before = process.memory_info().rss
    for _ in range(steps):
        _, pullback = bm.forward(x)
        pullback(cot)
    with memory.scope():  # forwards whose pullback is never called
        for _ in range(steps):
            bm.forward(x)
    gc.collect()
    rss_growth = (process.memory_info().rss - rss_before) / 2**20
    differences = memory.stats().differences(baseline)
    bm.close()
    return {
        "memory_steps": steps,
        "memory_rss_growth_mb": rss_growth,
        "memory_ledger_at_baseline": not differences,
    }


def run() -> dict:
    results = {}
    results.update(exchange())
    results.update(tiny_mlp_overhead())
    results.update(resnet18_step())
    results.update(memory_after_steps())
    return results
