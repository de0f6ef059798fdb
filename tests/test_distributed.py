"""Two ranks on 127.0.0.1 (gloo), compared with one process.

Each test starts two ``distributed_worker.py`` processes, with a launcher's
variables set by hand (Open MPI's, MPICH's, Slurm's, torchrun's) or under
``python -m torch.distributed.run``, waits for them with a timeout, and checks
what they saved against the same computation done here in one process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import distributed_worker as worker
import torchbridge
from torchbridge import julia_support
from torchbridge.train import TrainStep, fit, loss_from_name, optimizer_from_spec

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)

WORKER = str(Path(__file__).parent / "distributed_worker.py")
WAIT_S = 180  # the most a two-rank test may take, start-up on a busy machine included
# variables of any launcher that must not leak in from the environment running the tests
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher_env(launcher: str, rank: int, size: int) -> dict[str, str]:
    if launcher == "torchrun":
        return {"RANK": rank, "WORLD_SIZE": size, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": size}
    if launcher == "openmpi":
        return {
            "OMPI_COMM_WORLD_RANK": rank,
            "OMPI_COMM_WORLD_SIZE": size,
            "OMPI_COMM_WORLD_LOCAL_RANK": rank,
            "OMPI_COMM_WORLD_LOCAL_SIZE": size,
        }
    if launcher == "mpich":
        return {
            "PMI_RANK": rank,
            "PMI_SIZE": size,
            "MPI_LOCALRANKID": rank,
            "MPI_LOCALNRANKS": size,
        }
    if launcher == "slurm":
        return {
            "SLURM_PROCID": rank,
            "SLURM_STEP_NUM_TASKS": size,
            "SLURM_LOCALID": rank,
            "SLURM_STEP_NUM_NODES": 1,
        }
    raise ValueError(launcher)


def _base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _LAUNCHER_VARS and not k.startswith(("OMPI_", "PMI_", "SLURM_", "MPI_LOCAL"))
    }
    env.update(
        {
            "MASTER_PORT": str(_free_port()),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).parent), *filter(None, [env.get("PYTHONPATH")])]
            ),
        }
    )
    env.update(extra or {})
    return env


class Ranks:
    """Two worker processes, their exit codes, output and saved results."""

    def __init__(self, procs, out: Path, logs: list[Path]):
        self.procs, self.out, self.logs = procs, out, logs
        self.returncodes: list[int | None] = [None] * len(procs)
        self.seconds = 0.0

    def wait(self, timeout: float = WAIT_S, only: int | None = None) -> Ranks:
        started = time.monotonic()
        try:
            for i, p in enumerate(self.procs):
                if only is None or i == only:
                    remaining = timeout - (time.monotonic() - started)
                    self.returncodes[i] = p.wait(timeout=max(remaining, 0.1))
        finally:
            self.seconds = time.monotonic() - started
            self.kill()
        return self

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def log(self, rank: int) -> str:
        return self.logs[rank].read_text()

    def result(self, rank: int) -> dict:
        return torch.load(self.out / f"rank{rank}.pt", weights_only=False)

    def check_ok(self) -> Ranks:
        for rank, code in enumerate(self.returncodes):
            assert code == 0, f"rank {rank} exited with {code}:\n{self.log(rank)[-3000:]}"
        return self


def launch(scenario: str, out: Path, launcher: str, *, extra_env=None, size: int = 2) -> Ranks:
    """Start ``size`` ranks of ``scenario`` with ``launcher``'s variables set by hand."""
    env = _base_env({"MASTER_ADDR": "127.0.0.1", **(extra_env or {})})
    procs, logs = [], []
    for rank in range(size):
        rank_env = {**env, **{k: str(v) for k, v in _launcher_env(launcher, rank, size).items()}}
        logs.append(out / f"log{rank}.txt")
        with logs[-1].open("w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, WORKER, scenario, str(out)],
                    env=rank_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return Ranks(procs, out, logs)


def launch_torchrun(scenario: str, out: Path, *, extra_env=None) -> Ranks:
    """Start two ranks of ``scenario`` with ``python -m torch.distributed.run``."""
    env = _base_env(extra_env)
    log = out / "torchrun.txt"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node=2",
                "--master_addr=127.0.0.1",
                f"--master_port={env['MASTER_PORT']}",
                WORKER,
                scenario,
                str(out),
            ],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return Ranks([proc], out, [log])


def _close(a, b, atol):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


class TestBridgedPullback:
    def test_gradient_buffers_hold_the_whole_batch_gradient(self, tmp_path):
        """After one forward/pullback on each rank's half, every rank's buffers hold the
        single-process gradient of the whole batch's mean loss, and Adam steps identically."""
        ranks = launch("bridged", tmp_path, "openmpi").wait().check_ok()
        # one process: rank 0's initial weights (DDP broadcasts them), the whole batch
        model = torchbridge.bridge(worker.make_mlp(seed=100))
        x, y = worker.fixed_batch()
        (out,), pullback = model.forward(x, input_grads=False)
        pullback(worker.mse_cotangent(out, y, y.numel()))
        expected = [g.clone() for g in model.grads]
        opt = julia_support.optimizer(model, {"rule": "Adam", "eta": 0.01})
        julia_support.optimizer_step(opt)
        stepped = [p.clone() for p in model.params]
        julia_support.train_step(julia_support.trainer(opt, "mse"), x, y)
        trained = [p.clone() for p in model.params]
        for rank in (0, 1):
            got = ranks.result(rank)
            assert got["world"]["launcher"] == "mpi" and got["world"]["rank"] == rank
            assert got["ddp"] and got["buffers_attached"]
            assert got["param_names"] == list(model.param_names)  # no "module." prefix
            assert got["state_names"] == list(model.param_names)
            _close(
                got["params_before_step"], [p for p in worker.make_mlp(seed=100).parameters()], 0
            )
            _close(got["grads"], expected, 1e-6)
            _close(got["params_after_step"], stepped, 1e-6)
            _close(got["params_after_trainer"], trained, 1e-6)  # Julia's TorchTrainer path
            assert got["ledger_differences"] == []
        model.close()


def _native_reference():
    """The torch-native runs of distributed_worker.native, in one process on global batches."""
    model = worker.make_mlp(seed=200, dtype=torch.float64)
    opt = optimizer_from_spec({"rule": "Adam", "eta": 0.01}, model.parameters())
    step = TrainStep(model, opt, loss_from_name("logitcrossentropy"))
    for x, y in worker.class_batches(worker.STEP_SIZES):
        step(x, y)
    step_params = model.state_dict()
    model = worker.make_mlp(seed=300, dtype=torch.float64)
    history = fit(
        model,
        worker.class_batches(worker.FIT_SIZES),
        worker.class_batches((5,), seed=12),
        epochs=2,
        optimizer={"rule": "Adam", "eta": 0.01},
        loss="logitcrossentropy",
        metrics=["accuracy"],
        progress=False,
    )
    return step_params, model.state_dict(), history.epochs


def _check_native(results: list[dict]):
    step_params, fit_params, fit_epochs = _native_reference()
    for got in results:
        _close(got["step_params"].values(), step_params.values(), 1e-10)
        _close(got["fit_params"].values(), fit_params.values(), 1e-10)
        for row, expected in zip(got["fit_history"], fit_epochs, strict=True):
            for key in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"):
                assert row[key] == pytest.approx(expected[key], abs=1e-6), key  # float32 sums
    # the Dataset path: every rank ends with the same weights and reports the same figures
    a, b = results
    _close(a["dataset_params"].values(), b["dataset_params"].values(), 0)
    assert [r["train_loss"] for r in a["dataset_history"]] == [
        r["train_loss"] for r in b["dataset_history"]
    ]


class TestTorchNative:
    def test_steps_and_fit_equal_one_process_with_the_global_batch(self, tmp_path):
        """TrainStep and fit on each rank's share (uneven shares included) end with the
        parameters and metrics of one process on the whole batches (torchrun's variables)."""
        ranks = launch("native", tmp_path, "torchrun").wait().check_ok()
        _check_native([ranks.result(0), ranks.result(1)])

    def test_under_torchrun(self, tmp_path):
        """The same run started by `python -m torch.distributed.run --nproc_per_node=2`."""
        ranks = launch_torchrun("native", tmp_path).wait().check_ok()
        results = [ranks.result(0), ranks.result(1)]
        assert {r["world"]["launcher"] for r in results} == {"torchrun"}
        _check_native(results)

    def test_checkpoint_from_rank_zero_loads_in_one_process(self, tmp_path, isolated_caches):
        """fit saves from rank 0 only, prints from rank 0 only, and the checkpoint loads
        in one process with rank 0's final weights (MPICH's variables)."""
        ranks = launch(
            "checkpoint",
            tmp_path,
            "mpich",
            extra_env={"TORCHBRIDGE_HOME": str(isolated_caches / "torchbridge")},
        )
        ranks.wait().check_ok()
        first, second = ranks.result(0), ranks.result(1)
        assert first["checkpoint"] == "local/ddp-ckpt" and second["checkpoint"] is None
        assert "epoch 2/2" in ranks.log(0) and "epoch" not in ranks.log(1)
        _close(first["state"].values(), second["state"].values(), 0)
        loaded = torchbridge.load_model("local/ddp-ckpt")
        _close(loaded.state_dict().values(), first["state"].values(), 0)


class TestFailures:
    def test_a_rank_that_raises_stops_the_other(self, tmp_path):
        """Rank 1 raises and exits; rank 0's pullback fails with RankFailedError at once,
        exits non-zero, and its ledger is back at its baseline (Slurm's variables)."""
        ranks = launch("fail_raise", tmp_path, "slurm").wait(timeout=120)
        assert ranks.returncodes[1] != 0 and "rank 1 fails on purpose" in ranks.log(1)
        assert ranks.returncodes[0] != 0
        name, seconds, *differences = (tmp_path / "rank0.failure").read_text().splitlines()
        assert name == "RankFailedError" and "another rank died" in ranks.log(0)
        assert float(seconds) < 30
        assert differences == []

    def test_a_rank_that_hangs_is_bounded_by_the_timeout(self, tmp_path):
        """Rank 1 raises but stays alive; rank 0 fails with RankFailedError once the
        process group's 5 s timeout expires, instead of waiting forever."""
        ranks = launch("fail_hang", tmp_path, "torchrun", extra_env={"TEST_DIST_TIMEOUT": "5"})
        ranks.wait(timeout=120, only=0)
        assert ranks.returncodes[0] != 0
        name, seconds, *differences = (tmp_path / "rank0.failure").read_text().splitlines()
        assert name == "RankFailedError"
        assert 4 <= float(seconds) < 30
        assert differences == []
