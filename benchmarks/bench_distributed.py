"""Data-parallel step time: one process versus two, on the same global batch (a report).

Each configuration runs under ``python -m torch.distributed.run
--nproc_per_node=N`` (gloo on 127.0.0.1 here; nccl on a GPU node), and rank 0
reports the median time of a training step on an MLP for two paths:

* ``native``: :class:`torchbridge.train.TrainStep` (DDP inside), each rank on
  its share of the global batch;
* ``bridged``: a bridged model's forward and pullback (what Julia's AD runs,
  DDP's all-reduce inside the pullback) and a torch optimiser step on the
  shared gradient buffers.

On a machine with two cores shared by other jobs the two processes compete for
the same cores, so the figure measures overhead, not a speed-up; see
``docs/distributed.md`` for what to expect on real multi-GPU nodes.

Run alone: ``python benchmarks/bench_distributed.py`` prints the dict ``run()`` returns.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GLOBAL_BATCH = 256
WIDTH = 1024
STEPS = 30
WARMUP = 5


def _model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(WIDTH, WIDTH),
        torch.nn.ReLU(),
        torch.nn.Linear(WIDTH, WIDTH),
        torch.nn.ReLU(),
        torch.nn.Linear(WIDTH, 10),
    )


def _median_step(fn) -> float:
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(STEPS):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def worker(path: Path) -> None:
    """One rank: time both paths on this rank's share of the global batch."""
    import torch

    import torchbridge
    from torchbridge import julia_support
    from torchbridge.train import TrainStep, loss_from_name, optimizer_from_spec

    world = torchbridge.distributed.init()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.world_size))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(GLOBAL_BATCH, WIDTH, generator=g)
    y = torch.randint(0, 10, (GLOBAL_BATCH,), generator=g)
    xs = torchbridge.distributed.shard(x, world.rank, world.world_size)
    ys = torchbridge.distributed.shard(y, world.rank, world.world_size)

    model = _model()
    step = TrainStep(
        model,
        optimizer_from_spec({"rule": "Adam", "eta": 1e-3}, model.parameters()),
        loss_from_name("logitcrossentropy"),
    )
    native = _median_step(lambda: step(xs, ys))

    bridged = torchbridge.bridge(_model())
    opt = julia_support.optimizer(bridged, {"rule": "Adam", "eta": 1e-3})
    loss_fn = loss_from_name("logitcrossentropy")
    baseline = torchbridge.memory.snapshot()

    def bridged_step():
        (out,), pullback = bridged.forward(xs, input_grads=False)
        # the cotangent of the global mean loss, as Zygote would hand it over
        logits = out.detach().requires_grad_(True)
        loss_fn(logits, ys).backward()
        pullback(logits.grad)
        julia_support.optimizer_step(opt)

    bridged_s = _median_step(bridged_step)
    ledger_ok = not torchbridge.memory.stats().differences(baseline)
    bridged.close()
    if world.is_main:
        path.write_text(
            json.dumps(
                {
                    "native_s": native,
                    "bridged_s": bridged_s,
                    "ledger_ok": ledger_ok,
                    **world.to_dict(),
                }
            )
        )
    torchbridge.distributed.destroy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(nproc: int, path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            __file__,
            "--worker",
            str(path),
        ],
        env=env,
        check=True,
        timeout=600,
        capture_output=True,
    )
    return json.loads(path.read_text())


def run() -> dict:
    """run() -> {"dist_native_step_ms_1proc": ..., "dist_native_step_ms_2proc": ..., ...}"""
    results: dict = {"dist_global_batch": GLOBAL_BATCH, "dist_model": f"MLP {WIDTH}x{WIDTH}x10"}
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, 2):
            got = _launch(nproc, Path(tmp) / f"{nproc}.json")
            results[f"dist_native_step_ms_{nproc}proc"] = got["native_s"] * 1e3
            results[f"dist_bridged_step_ms_{nproc}proc"] = got["bridged_s"] * 1e3
            results[f"dist_ledger_at_baseline_{nproc}proc"] = got["ledger_ok"]
            results[f"dist_backend_{nproc}proc"] = got["backend"] or "none (world of one)"
    for path in ("native", "bridged"):
        results[f"dist_{path}_2proc_over_1proc"] = (
            results[f"dist_{path}_step_ms_2proc"] / results[f"dist_{path}_step_ms_1proc"]
        )
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]))
    else:
        print(json.dumps(run(), indent=2))
