"""One rank of a distributed test: `python distributed_worker.py SCENARIO OUTDIR`.

The tests in ``test_distributed.py`` start two of these on 127.0.0.1 (with the
variables of a launcher set by hand, or under ``torch.distributed.run``), and
compare what each rank saves in ``OUTDIR/rank<r>.pt`` with one process.
Shared fixtures (the model, the global batch) live here so both sides build
exactly the same ones.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

GLOBAL_BATCH = 8


def make_mlp(seed: int, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(
        dtype
    )


def fixed_batch(dtype=torch.float32, n: int = GLOBAL_BATCH, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=dtype), torch.randn(n, 3, generator=g, dtype=dtype)


def class_batches(sizes, seed: int = 11):
    """Batches of (features float64, class index) for the torch-native runs."""
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=g),
        )
        for n in sizes
    ]


STEP_SIZES = (6, 6, 6)  # TrainStep: three global batches of 6 rows
FIT_SIZES = (7, 7, 4)  # fit: 7 rows do not split evenly over two ranks (weighted shares)


def mse_cotangent(out: torch.Tensor, y: torch.Tensor, total: int) -> torch.Tensor:
    """d/d(out) of sum((out - y)^2) / total: the global batch's mean loss, this rank's rows."""
    return 2 * (out - y) / total


def bridged(out: Path, world) -> dict:
    import torchbridge
    from torchbridge import julia_support

    baseline = torchbridge.memory.snapshot()
    model = torchbridge.bridge(make_mlp(seed=100 + world.rank))  # rank 0's weights win
    x, y = fixed_batch()
    xs = torch.tensor_split(x, world.world_size)[world.rank]
    ys = torch.tensor_split(y, world.world_size)[world.rank]
    outputs, pullback, _ = julia_support.forward(model, xs, input_grads=False)
    dy = mse_cotangent(outputs[0], ys, y.numel() // world.world_size)
    julia_support.pullback(pullback, dy)
    state = julia_support.model_state(model)
    result = {
        "param_names": list(model.param_names),
        "state_names": list(state["param_names"]),
        "params_before_step": [p.clone() for p in model.params],
        "grads": [g.clone() for g in model.grads],
        "buffers_attached": all(p.grad is g for p, g in zip(model.parameters, model.grads)),
        "ddp": model.ddp is not None,
    }
    opt = julia_support.optimizer(model, {"rule": "Adam", "eta": 0.01})
    julia_support.optimizer_step(opt)
    result["params_after_step"] = [p.clone() for p in model.params]
    # the torch-native step TorchBridge.jl's TorchTrainer runs, on this rank's rows
    trainer = julia_support.trainer(opt, "mse")
    julia_support.train_step(trainer, xs, ys)
    result["params_after_trainer"] = [p.clone() for p in model.params]
    model.close()
    result["ledger_differences"] = torchbridge.memory.stats().differences(baseline)
    return result


def native(out: Path, world) -> dict:
    from torchbridge.train import TrainStep, fit, loss_from_name, optimizer_from_spec

    model = make_mlp(seed=200 + world.rank, dtype=torch.float64)
    opt = optimizer_from_spec({"rule": "Adam", "eta": 0.01}, model.parameters())
    step = TrainStep(model, opt, loss_from_name("logitcrossentropy"))
    for x, y in class_batches(STEP_SIZES):
        step(
            torch.tensor_split(x, world.world_size)[world.rank],
            torch.tensor_split(y, world.world_size)[world.rank],
        )
    result = {"step_params": {k: v.clone() for k, v in model.state_dict().items()}}

    model = make_mlp(seed=300 + world.rank, dtype=torch.float64)
    batches = class_batches(FIT_SIZES)
    history = fit(
        model,
        batches,
        class_batches((5,), seed=12),
        epochs=2,
        optimizer={"rule": "Adam", "eta": 0.01},
        loss="logitcrossentropy",
        metrics=["accuracy"],
        progress=False,
    )
    result["fit_params"] = {k: v.clone() for k, v in model.state_dict().items()}
    result["fit_history"] = history.epochs

    # a Dataset: DistributedSampler shares, the same averaged gradients everywhere
    dataset = torch.utils.data.TensorDataset(*class_batches((10,), seed=13)[0])
    model = make_mlp(seed=400 + world.rank, dtype=torch.float64)
    history = fit(
        model,
        dataset,
        dataset,
        epochs=2,
        batch_size=2,
        optimizer={"rule": "Descent", "eta": 0.1},
        loss="logitcrossentropy",
        progress=False,
    )
    result["dataset_params"] = {k: v.clone() for k, v in model.state_dict().items()}
    result["dataset_history"] = history.epochs
    return result


def checkpoint(out: Path, world) -> dict:
    import timm

    from torchbridge.train import Checkpoint, fit

    torch.manual_seed(world.rank)
    model = timm.create_model("test_resnet", num_classes=3)
    g = torch.Generator().manual_seed(5)
    batches = [
        (torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 3, (4,), generator=g))
        for _ in range(2)
    ]
    history = fit(
        model,
        batches,
        epochs=2,
        optimizer={"rule": "Adam", "eta": 1e-3},
        loss="logitcrossentropy",
        checkpoint=Checkpoint("ddp-ckpt", save="last"),
    )
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "checkpoint": None if history.checkpoint is None else history.checkpoint.id,
    }


def fail_raise(out: Path, world) -> dict:
    """Rank 1 raises (and its process ends); rank 0 runs a step and must fail, not hang."""
    import torchbridge

    baseline = torchbridge.memory.snapshot()
    model = torchbridge.bridge(make_mlp(seed=1))
    if world.rank == 1:
        raise ValueError("rank 1 fails on purpose")
    _run_step_and_record(out, torchbridge, model, baseline)
    return {}


def fail_hang(out: Path, world) -> dict:
    """Rank 1 raises but stays alive (a caught error in a REPL); rank 0 must fail by timeout."""
    import torchbridge

    baseline = torchbridge.memory.snapshot()
    model = torchbridge.bridge(make_mlp(seed=1))
    if world.rank == 1:
        try:
            raise ValueError("rank 1 fails on purpose and lingers")
        except ValueError:
            time.sleep(120)
        return {}
    _run_step_and_record(out, torchbridge, model, baseline)
    return {}


def _run_step_and_record(out: Path, torchbridge, model, baseline) -> None:
    x, y = fixed_batch()
    started = time.monotonic()
    try:
        with torchbridge.memory.scope():
            outputs, pullback = model.forward(x, input_grads=False)
            pullback(mse_cotangent(outputs[0], y, y.numel()))
    except torchbridge.RankFailedError as exc:
        model.close()
        (out / "rank0.failure").write_text(
            f"{type(exc).__name__}\n{time.monotonic() - started:.3f}\n"
            + "\n".join(torchbridge.memory.stats().differences(baseline))
        )
        raise


SCENARIOS = {
    "bridged": bridged,
    "native": native,
    "checkpoint": checkpoint,
    "fail_raise": fail_raise,
    "fail_hang": fail_hang,
}


def main() -> None:
    import torchbridge

    scenario, out = sys.argv[1], Path(sys.argv[2])
    world = torchbridge.distributed.init(
        "gloo", timeout=float(os.environ.get("TEST_DIST_TIMEOUT", "60"))
    )
    result = SCENARIOS[scenario](out, world)
    result["world"] = world.to_dict()
    torch.save(result, out / f"rank{world.rank}.pt")
    torchbridge.distributed.destroy()


if __name__ == "__main__":
    main()
