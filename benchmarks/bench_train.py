"""Training throughput through torchbridge versus plain PyTorch, and ONNX export time.

The bridged side is what a Julia user runs: the batches arrive as foreign
column-major arrays (Fortran-order numpy, shaped like a Julia WHCN batch) and
go through ``torchbridge.train.TrainStep`` with an Optimisers.jl rule spec and
a Flux loss name. The plain side is the textbook PyTorch loop over the same
model, the same data (as C-ordered NCHW tensors) and the same optimiser.
Steps alternate between the two so that load on the machine hits both alike,
and each side is scored by its median step time.

Run alone: ``python benchmarks/bench_train.py`` prints the dict ``run()`` returns.
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

ARCH = "resnet10t"
IMAGE = (3, 32, 32)
BATCH = 32
STEPS = 8  # batches, each timed once per round
ROUNDS = 6
WARMUP = 3


def _data(n_batches: int):
    import numpy as np

    rng = np.random.default_rng(0)
    nchw = [rng.standard_normal((BATCH, *IMAGE), dtype=np.float32) for _ in range(n_batches)]
    labels = [rng.integers(0, 10, BATCH) for _ in range(n_batches)]
    # the same values as Julia holds them: a (W, H, C, N) column-major array
    julia = [np.array(x.transpose(3, 2, 1, 0), order="F") for x in nchw]
    return nchw, julia, labels


def _plain_step(model, optimizer, x, y) -> float:
    import torch.nn.functional as F

    started = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def _bridged_step(step, x, y) -> float:
    from torchbridge.exchange import to_torch

    started = time.perf_counter()
    step(to_torch(x, layout="julia"), y)  # a Julia-ordered batch, declared as such
    return time.perf_counter() - started


def run() -> dict:
    """run() -> {"train_step_over_torch": ratio, "train_images_per_s_bridge": ..., ...}"""
    import timm
    import torch

    from torchbridge.export import export_onnx
    from torchbridge.train import TrainStep, loss_from_name, optimizer_from_spec

    torch.manual_seed(0)
    reference = timm.create_model(ARCH, num_classes=10)
    plain_model, bridged_model = copy.deepcopy(reference).train(), copy.deepcopy(reference).train()
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-3)
    step = TrainStep(
        bridged_model,
        optimizer_from_spec({"rule": "Adam", "eta": 1e-3}, bridged_model.parameters()),
        loss_from_name("logitcrossentropy"),
    )
    nchw, julia, labels = _data(STEPS)
    torch_x = [torch.from_numpy(x) for x in nchw]
    torch_y = [torch.from_numpy(y) for y in labels]

    for i in range(WARMUP):
        _plain_step(plain_model, plain_opt, torch_x[i % STEPS], torch_y[i % STEPS])
        _bridged_step(step, julia[i % STEPS], labels[i % STEPS])
    plain, bridged = [], []
    for _ in range(ROUNDS):
        for i in range(STEPS):
            # alternate which goes first, so drift in machine load is shared
            if i % 2 == 0:
                plain.append(_plain_step(plain_model, plain_opt, torch_x[i], torch_y[i]))
                bridged.append(_bridged_step(step, julia[i], labels[i]))
            else:
                bridged.append(_bridged_step(step, julia[i], labels[i]))
                plain.append(_plain_step(plain_model, plain_opt, torch_x[i], torch_y[i]))
    plain_rate = BATCH / statistics.median(plain)
    bridged_rate = BATCH / statistics.median(bridged)

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        report = export_onnx(reference.eval(), Path(folder) / "bench.onnx", input_size=IMAGE)
        export_seconds = time.perf_counter() - started

    return {
        "train_step_over_torch": bridged_rate / plain_rate,
        "train_images_per_s_bridge": bridged_rate,
        "train_images_per_s_torch": plain_rate,
        "export_s": export_seconds,
        "export_max_abs_diff": report.max_abs_diff,
        "train_model": f"timm/{ARCH}, batch {BATCH}x{'x'.join(map(str, IMAGE))}, Adam, "
        f"{torch.get_num_threads()} threads",
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
