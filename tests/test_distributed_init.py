"""Launcher variables, the world of one, and the Julia-facing calls, in this process."""

from __future__ import annotations

import pytest
import torch

import torchbridge
from torchbridge import distributed, julia_support
from torchbridge.errors import DistributedError, RankFailedError
from torchbridge.train import TrainStep, loss_from_name, optimizer_from_spec


class TestDetectLauncher:
    def test_no_launcher_is_a_world_of_one(self):
        """No launcher variables: rank 0 of 1."""
        launch = distributed.detect_launcher({})
        assert (launch.launcher, launch.rank, launch.world_size) == ("none", 0, 1)

    def test_torchrun(self):
        """torchrun's variables, with its address and port."""
        env = {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "node0",
            "MASTER_PORT": "1234",
        }
        launch = distributed.detect_launcher(env)
        assert launch == distributed.Launch("torchrun", 3, 8, 1, 2, "node0", 1234)

    def test_open_mpi_on_one_node_uses_loopback(self):
        """Open MPI's variables; all ranks local, so 127.0.0.1:29500."""
        env = {
            "OMPI_COMM_WORLD_RANK": "1",
            "OMPI_COMM_WORLD_SIZE": "2",
            "OMPI_COMM_WORLD_LOCAL_RANK": "1",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
        }
        assert distributed.detect_launcher(env) == distributed.Launch(
            "mpi", 1, 2, 1, 2, "127.0.0.1", 29500
        )

    def test_mpich_hydra_as_mpiexecjl_sets_it(self):
        """PMI_RANK/PMI_SIZE and Hydra's local rank (mpiexecjl runs MPICH's mpiexec)."""
        env = {"PMI_RANK": "0", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "4"}
        launch = distributed.detect_launcher({**env, "MASTER_PORT": "4000"})
        assert launch == distributed.Launch("mpi", 0, 4, 0, 4, "127.0.0.1", 4000)

    def test_mpi_on_several_nodes_needs_master_addr(self):
        """An MPI job across nodes without MASTER_ADDR is refused with the fix."""
        env = {"PMI_RANK": "0", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2"}
        with pytest.raises(DistributedError, match="MASTER_ADDR"):
            distributed.detect_launcher(env)
        launch = distributed.detect_launcher({**env, "MASTER_ADDR": "head"})
        assert launch.master_addr == "head" and launch.local_world_size == 2

    def test_slurm_step_on_several_nodes(self):
        """srun's variables: the first host of the node list, a port from the job id."""
        env = {
            "SLURM_PROCID": "5",
            "SLURM_STEP_NUM_TASKS": "8",
            "SLURM_LOCALID": "1",
            "SLURM_STEP_NUM_NODES": "2",
            "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
            "SLURM_STEP_NODELIST": "gpu[07-08]",
            "SLURM_JOB_ID": "123456",
        }
        assert distributed.detect_launcher(env) == distributed.Launch(
            "slurm", 5, 8, 1, 4, "gpu07", 15000 + 123456 % 10000
        )

    def test_slurm_batch_script_without_srun_is_a_world_of_one(self):
        """A batch script (no job step) is not a rank of its allocation."""
        env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"}
        assert distributed.detect_launcher(env).world_size == 1

    def test_torchrun_wins_over_slurm(self):
        """torchrun under srun: torchrun's variables are the ranks."""
        env = {"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}
        assert distributed.detect_launcher(env).launcher == "torchrun"

    @pytest.mark.parametrize(
        ("nodelist", "first"),
        [("n1", "n1"), ("n1,n2", "n1"), ("gpu[03-05,07],cpu1", "gpu03"), ("a[9]", "a9")],
    )
    def test_first_slurm_host(self, nodelist, first):
        """The first host of a compressed Slurm node list."""
        assert distributed.first_slurm_host(nodelist) == first

    def test_bad_value_names_the_variable(self):
        """A non-integer rank names the variable."""
        with pytest.raises(DistributedError, match="WORLD_SIZE"):
            distributed.detect_launcher({"RANK": "0", "WORLD_SIZE": "two"})


class TestWorldOfOne:
    def test_init_without_launcher_creates_no_group(self):
        """init() without a launcher: rank 0 of 1, no process group, destroy() a no-op."""
        world = distributed.init(environ={})
        try:
            assert (world.rank, world.world_size, world.backend) == (0, 1, None)
            assert world.is_main and not distributed.is_distributed()
            assert not torch.distributed.is_initialized()
            assert distributed.init() is world  # idempotent
        finally:
            distributed.destroy()
        distributed.destroy()

    def test_training_paths_are_unchanged(self):
        """Without a group, bridge and TrainStep do not wrap and collectives are local."""
        distributed.init(environ={})
        try:
            model = torch.nn.Linear(3, 2)
            with torchbridge.bridge(model) as bridged:
                assert bridged.ddp is None
            step = TrainStep(
                model,
                optimizer_from_spec({"rule": "Descent"}, model.parameters()),
                loss_from_name("mse"),
            )
            assert step.ddp is None
            assert distributed.all_sum([1.5, 2]) == [1.5, 2.0]
            distributed.barrier()
        finally:
            distributed.destroy()

    def test_bad_timeout_is_refused(self, monkeypatch):
        """A timeout that is not a positive number of seconds is a DistributedError."""
        env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
        with pytest.raises(DistributedError, match="timeout"):
            distributed.init(timeout=0, environ=env)
        monkeypatch.setenv("TORCHBRIDGE_DIST_TIMEOUT", "soon")
        with pytest.raises(DistributedError, match="TORCHBRIDGE_DIST_TIMEOUT"):
            distributed.init(environ=env)

    def test_rank_failure_ignores_errors_without_a_group(self):
        """Without a group no error is taken for a failed collective."""
        assert distributed.rank_failure(RuntimeError("gloo: timed out"), "x") is None
        assert issubclass(RankFailedError, RuntimeError)


class TestShards:
    @pytest.mark.parametrize(("n", "size"), [(8, 2), (7, 2), (5, 3), (1, 2)])
    def test_shard_bounds_match_tensor_split(self, n, size):
        """julia_support.shard_bounds gives the rows torch.tensor_split (and fit) gives."""
        rows = torch.arange(n)
        for rank in range(size):
            start, stop = julia_support.shard_bounds(n, rank, size)
            assert rows[start:stop].tolist() == distributed.shard(rows, rank, size).tolist()

    def test_shard_cuts_mappings_and_tuples(self):
        """Keyword inputs and tuples are cut item by item."""
        batch = {"input_ids": torch.arange(6).reshape(3, 2), "mask": torch.ones(3, 2)}
        part = distributed.shard(batch, 1, 2)
        assert part["input_ids"].tolist() == [[4, 5]] and part["mask"].shape == (1, 2)


class TestJuliaSupport:
    def test_world_is_plain_values(self):
        """init_distributed / distributed_world return ints, strings and None only."""
        info = julia_support.init_distributed()
        try:
            assert info == julia_support.distributed_world()
            assert info["rank"] == 0 and info["world_size"] == 1 and info["backend"] is None
            assert info["device_type"] in ("cpu", "cuda") and isinstance(info["device"], str)
            assert all(isinstance(v, (int, str, type(None))) for v in info.values())
            julia_support.distributed_barrier()
            assert julia_support.distributed_all_sum((1, 2)) == [1.0, 2.0]
        finally:
            julia_support.destroy_distributed()

    def test_names_are_exported(self):
        """The distributed calls are part of julia_support's surface."""
        for name in (
            "init_distributed",
            "destroy_distributed",
            "distributed_world",
            "distributed_barrier",
            "distributed_all_sum",
            "shard_bounds",
        ):
            assert name in julia_support.__all__ and callable(getattr(julia_support, name))
