"""Data-parallel training on ``torch.distributed``, launched from Python or Julia.

``init()`` starts the default process group from whichever launcher started
this process, and returns the :class:`World` it joined; ``destroy()`` ends it.
Once a group of more than one process exists, :class:`~torchbridge.train.TrainStep`,
:func:`~torchbridge.train.fit` and :func:`~torchbridge.bridge` wrap the module
in ``DistributedDataParallel`` (one wrapper per module, see :func:`wrap`), so
the gradients every rank sees are the average over the ranks. All the
communication is torch's: the process group, DDP's gradient buckets, and
``all_reduce`` for metrics.

NOTE [launchers]
The variables read, first match wins:

* torchrun (``python -m torch.distributed.run``), or set by hand: ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT``. The group is initialised from ``env://`` (under torchrun the
  agent's store is used);
* Open MPI (``mpirun``, ``mpiexec``): ``OMPI_COMM_WORLD_RANK``, ``_SIZE``,
  ``_LOCAL_RANK``, ``_LOCAL_SIZE``;
* MPICH, Intel MPI and every Hydra ``mpiexec`` (``mpiexecjl`` runs MPICH_jll's):
  ``PMI_RANK``, ``PMI_SIZE``, ``MPI_LOCALRANKID``, ``MPI_LOCALNRANKS``;
* Slurm's ``srun``: ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``,
  ``SLURM_STEP_NUM_NODES``, ``SLURM_STEP_NODELIST``. Only a job step counts: a
  batch script itself (no ``srun``) is a world of one, not a rank of the
  allocation.

For MPI and Slurm the rendezvous is ``tcp://MASTER_ADDR:MASTER_PORT``. Without
``MASTER_ADDR``, a job on one node uses 127.0.0.1 and a Slurm job on several
nodes the first host of its node list (rank 0's under Slurm's default block
distribution); an MPI job on several nodes must set it. Without
``MASTER_PORT``: 29500, or under Slurm 15000 + the job id modulo 10000 (two
jobs sharing a node then do not collide).

NOTE [world of one]
A process that no launcher started (or a launch of one process) creates no
process group: ``init()`` returns ``World(rank=0, world_size=1, ...)``,
:func:`is_distributed` is False, and every training path runs exactly as it
does without this module. So one script runs unchanged with ``python script.py``
and under ``torchrun --nproc_per_node=8 script.py``.

NOTE [failures are bounded]
Every collective of the group carries the timeout given to :func:`init`
(``TORCHBRIDGE_DIST_TIMEOUT`` seconds, default 600). A rank that dies closes its
connections and the others fail at their next collective, at once; a rank that
raises but stays alive (a caught exception in a REPL) makes the others fail
when the timeout expires. Either way the survivors raise
:class:`~torchbridge.errors.RankFailedError` (never hang), and a bridged
model's pullback that was running is released, so the ledger is back at its
baseline.
"""

from __future__ import annotations

import datetime
import os
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .devices import module_device
from .errors import DistributedError, RankFailedError

__all__ = [
    "World",
    "all_sum",
    "barrier",
    "broadcast_buffers",
    "destroy",
    "detect_launcher",
    "first_slurm_host",
    "init",
    "is_distributed",
    "is_main",
    "rank_failure",
    "shard",
    "world",
    "wrap",
]

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class World:
    """World: this process's place in the job.

    Attributes:
        rank: this process's rank, 0 ... ``world_size - 1``.
        world_size: the number of processes.
        local_rank: the rank among the processes of this node (picks the GPU).
        local_world_size: the number of processes on this node.
        device: the device this process should compute on: ``cuda:<local_rank
            modulo the visible GPUs>`` when CUDA is available, else ``cpu``.
        backend: ``"nccl"``, ``"gloo"`` ..., or ``None`` when no process group
            exists (a world of one, NOTE [world of one]).
        launcher: ``"torchrun"``, ``"mpi"``, ``"slurm"``, ``"external"`` (a
            group initialised by the caller) or ``"none"``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    launcher: str = "none"

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that prints, logs and saves."""
        return self.rank == 0

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the device as a string) for callers in other languages."""
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "local_rank": self.local_rank,
            "local_world_size": self.local_world_size,
            "device": str(self.device),
            "device_type": self.device.type,
            "device_index": -1 if self.device.index is None else self.device.index,
            "backend": self.backend,
            "launcher": self.launcher,
        }


@dataclass(frozen=True)
class Launch:
    """What a launcher's variables say (NOTE [launchers])."""

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str | None = None
    master_port: int | None = None


# -- launchers ----------------------------------------------------------------


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise DistributedError(f"distributed.init: the launcher did not set {name}.")
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(
            f"distributed.init: {name}={value!r} is not an integer; check the launch command."
        ) from None


def first_slurm_host(nodelist: str) -> str:
    """first_slurm_host("gpu[03-05,07],cpu1") -> "gpu03": the first host of a Slurm node list."""
    head = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if head is None:
        raise DistributedError(f"distributed.init: cannot read the Slurm node list {nodelist!r}.")
    prefix, ranges = head.group(1), head.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def detect_launcher(environ: Mapping[str, str] | None = None) -> Launch:
    """detect_launcher(environ=os.environ) -> Launch: rank and sizes from the launcher's variables.

    See NOTE [launchers] for the variables and their order; no launcher is
    ``Launch("none", 0, 1, 0, 1)``.
    """
    env = os.environ if environ is None else environ
    addr = env.get("MASTER_ADDR") or None
    port = _int(env, "MASTER_PORT", 0) or None
    if "RANK" in env and "WORLD_SIZE" in env:
        size = _int(env, "WORLD_SIZE")
        return Launch(
            "torchrun",
            _int(env, "RANK"),
            size,
            _int(env, "LOCAL_RANK", 0),
            _int(env, "LOCAL_WORLD_SIZE", size),
            addr,
            port,
        )
    if "OMPI_COMM_WORLD_RANK" in env:
        launch = Launch(
            "mpi",
            _int(env, "OMPI_COMM_WORLD_RANK"),
            _int(env, "OMPI_COMM_WORLD_SIZE"),
            _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0),
            _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", -1),
        )
    elif "PMI_RANK" in env:
        launch = Launch(
            "mpi",
            _int(env, "PMI_RANK"),
            _int(env, "PMI_SIZE"),
            _int(env, "MPI_LOCALRANKID", 0),
            _int(env, "MPI_LOCALNRANKS", -1),
        )
    elif "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        size = _int(env, "SLURM_STEP_NUM_TASKS")
        nodes = _int(env, "SLURM_STEP_NUM_NODES", _int(env, "SLURM_NNODES", 1))
        tasks_per_node = re.match(r"\d+", env.get("SLURM_STEP_TASKS_PER_NODE", ""))
        local_size = size if nodes == 1 else int(tasks_per_node.group()) if tasks_per_node else -1
        if addr is None and nodes > 1:
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
            if nodelist:
                addr = first_slurm_host(nodelist)
        if port is None and env.get("SLURM_JOB_ID", "").isdigit():
            port = 15000 + int(env["SLURM_JOB_ID"]) % 10000
        return Launch(
            "slurm",
            _int(env, "SLURM_PROCID"),
            size,
            _int(env, "SLURM_LOCALID", 0),
            local_size,
            addr or "127.0.0.1",
            port or DEFAULT_PORT,
        )
    else:
        return Launch("none", 0, 1, 0, 1)
    # MPI: one node unless the local size says otherwise
    if launch.local_world_size == -1 and launch.world_size == 1:
        launch = Launch("mpi", 0, 1, 0, 1)
    one_node = launch.local_world_size == launch.world_size
    if addr is None and not one_node and launch.world_size > 1:
        raise DistributedError(
            f"distributed.init: this MPI job has {launch.world_size} ranks on several nodes "
            "(or the launcher did not say how many are local), and MASTER_ADDR is not set. "
            "Set it to rank 0's host for every rank, e.g. `mpiexec -x MASTER_ADDR=$(hostname) "
            "...` (Open MPI) or `mpiexec -genv MASTER_ADDR $(hostname) ...` (MPICH)."
        )
    return Launch(
        launch.launcher,
        launch.rank,
        launch.world_size,
        launch.local_rank,
        launch.world_size if launch.local_world_size == -1 else launch.local_world_size,
        addr or "127.0.0.1",
        port or DEFAULT_PORT,
    )


# -- the process group ----------------------------------------------------------

_STATE: dict[str, Any] = {"world": None}


def _local_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _timeout(timeout: float | datetime.timedelta | None) -> datetime.timedelta:
    if isinstance(timeout, datetime.timedelta):
        return timeout
    if timeout is None:
        raw = os.environ.get("TORCHBRIDGE_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
        try:
            timeout = float(raw)
        except ValueError:
            raise DistributedError(
                f"distributed.init: TORCHBRIDGE_DIST_TIMEOUT={raw!r} is not a number of seconds."
            ) from None
    if timeout <= 0:
        raise DistributedError(f"distributed.init: timeout must be > 0 seconds, got {timeout!r}.")
    return datetime.timedelta(seconds=float(timeout))


def init(
    backend: str | None = None,
    *,
    timeout: float | datetime.timedelta | None = None,
    environ: Mapping[str, str] | None = None,
) -> World:
    """init(backend=None, *, timeout=None) -> World

    Join the job this process was launched into (NOTE [launchers]): create the
    default process group, pick this process's device from its local rank
    (``torch.cuda.set_device`` on a GPU node), and return the :class:`World`.
    Idempotent: a second call returns the same world. A process that no
    launcher started is a world of one and creates no group (NOTE [world of one]).

    Args:
        backend: ``"nccl"`` when this process has a CUDA device, else ``"gloo"``
            (the default); or any backend torch knows.
        timeout: seconds (or a ``timedelta``) that a rendezvous or a collective
            may wait for the other ranks before it fails (NOTE [failures are
            bounded]); default ``TORCHBRIDGE_DIST_TIMEOUT``, else 600.
        environ: the variables to read instead of ``os.environ`` (tests).

    Raises:
        DistributedError: inconsistent launcher variables, a missing
            ``MASTER_ADDR`` on several nodes, or ranks that did not all arrive
            within the timeout.
    """
    import torch.distributed as dist

    current = _STATE["world"]
    if current is not None and (current.backend is None or dist.is_initialized()):
        return current
    if dist.is_available() and dist.is_initialized():
        _STATE["world"] = world()
        return _STATE["world"]
    launch = detect_launcher(environ)
    if not 0 <= launch.rank < launch.world_size:
        raise DistributedError(
            f"distributed.init: rank {launch.rank} is outside a world of {launch.world_size} "
            f"({launch.launcher}); check the launch command."
        )
    device = _local_device(launch.local_rank)
    if launch.world_size == 1:
        _STATE["world"] = World(0, 1, 0, 1, device, None, launch.launcher)
        return _STATE["world"]
    if not dist.is_available():
        raise DistributedError(
            "distributed.init: this torch build has no torch.distributed; install a torch "
            "wheel from pytorch.org."
        )
    if backend is None:
        backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    wait = _timeout(timeout)
    try:
        if launch.launcher == "torchrun":
            env = os.environ if environ is None else environ
            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if not env.get(name):
                    raise DistributedError(
                        f"distributed.init: RANK and WORLD_SIZE are set but {name} is not; "
                        "torchrun sets all of them, and a launch by hand must too "
                        "(MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 on one machine)."
                    )
            if environ is not None:  # env:// reads os.environ
                for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
                    os.environ[name] = str(env[name])
            dist.init_process_group(backend, init_method="env://", timeout=wait)
        else:
            dist.init_process_group(
                backend,
                init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
                rank=launch.rank,
                world_size=launch.world_size,
                timeout=wait,
            )
    except DistributedError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"distributed.init: rank {launch.rank} of {launch.world_size} ({launch.launcher}) "
            f"could not join the process group at {launch.master_addr}:{launch.master_port} "
            f"within {wait.total_seconds():g} s: {exc}"
        ) from exc
    _STATE["world"] = World(
        launch.rank,
        launch.world_size,
        launch.local_rank,
        launch.local_world_size,
        device,
        backend,
        launch.launcher,
    )
    return _STATE["world"]


def destroy() -> None:
    """destroy() -> None: leave the process group (idempotent; nothing to do in a world of one)."""
    import torch.distributed as dist

    _WRAPPERS.clear()
    _STATE["world"] = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> World:
    """world() -> World: the current world; a world of one when no group exists.

    A group the caller initialised with ``torch.distributed`` directly is
    reported as ``launcher="external"``.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        known = _STATE["world"]
        if known is not None and known.backend is not None:
            return known
        launch = detect_launcher()
        local = launch.local_rank if launch.launcher != "none" else 0
        return World(
            dist.get_rank(),
            dist.get_world_size(),
            local,
            launch.local_world_size if launch.launcher != "none" else dist.get_world_size(),
            _local_device(local),
            str(dist.get_backend()),
            "external",
        )
    known = _STATE["world"]
    return known if known is not None else World(device=_local_device(0))


def is_distributed() -> bool:
    """is_distributed() -> bool: a process group of more than one process exists."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """is_main() -> bool: this is rank 0 (always, in a world of one)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# -- collectives ------------------------------------------------------------------

# What torch's backends say when a peer died, stopped answering, or the group broke.
_COLLECTIVE_FAILURE = re.compile(
    r"gloo|nccl|connection (closed|reset|refused)|broken pipe|timed out|timeout|"
    r"processgroup|process group|watchdog|socket|peer",
    re.IGNORECASE,
)


def rank_failure(exc: BaseException, what: str) -> RankFailedError | None:
    """rank_failure(exc, what) -> RankFailedError | None

    ``exc`` as a :class:`~torchbridge.errors.RankFailedError` when a process
    group exists and ``exc`` is a failed collective (another rank died, raised
    or did not answer within the timeout); ``None`` for any other error, which
    the caller re-raises unchanged.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    dist_error = getattr(dist, "DistError", ())
    if not isinstance(exc, dist_error) and not (
        isinstance(exc, RuntimeError) and _COLLECTIVE_FAILURE.search(str(exc))
    ):
        return None
    if isinstance(exc, RankFailedError):
        return exc
    me = world()
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return RankFailedError(
        f"{what}: a collective failed on rank {me.rank} of {me.world_size}: another rank died, "
        f"raised, or did not answer within the process group's timeout. Look at the other "
        f"ranks' output for the first error. torch said: {detail}"
    )


def _collective_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: Sequence[float], *, what: str = "all_sum") -> list[float]:
    """all_sum(values) -> list: each value summed over every rank (``values`` itself alone)."""
    if not is_distributed():
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    try:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    except Exception as exc:
        failure = rank_failure(exc, what)
        if failure is None:
            raise
        raise failure from exc
    return t.cpu().tolist()


def barrier(*, what: str = "barrier") -> None:
    """barrier() -> None: wait for every rank (nothing to wait for in a world of one)."""
    if not is_distributed():
        return
    import torch.distributed as dist

    try:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
    except Exception as exc:
        failure = rank_failure(exc, what)
        if failure is None:
            raise
        raise failure from exc


def broadcast_buffers(module: torch.nn.Module, *, what: str = "broadcast_buffers") -> None:
    """broadcast_buffers(module) -> None: every rank takes rank 0's buffers (BatchNorm statistics).

    DDP broadcasts them before each forward, so after the last forward of an
    epoch each rank's statistics are its own shard's; ``fit`` calls this at the
    end of every epoch so that validation, checkpoints and the returned model
    agree on every rank.
    """
    if not is_distributed():
        return
    import torch.distributed as dist

    try:
        for buffer in module.buffers():
            if buffer.device.type == "cpu" and dist.get_backend() == "nccl":
                continue  # nccl moves only device memory
            dist.broadcast(buffer, src=0)
    except Exception as exc:
        failure = rank_failure(exc, what)
        if failure is None:
            raise
        raise failure from exc


def shard(batch: Any, rank: int, world_size: int) -> Any:
    """shard(batch, rank, world_size) -> this rank's rows of a global batch.

    Tensors (and arrays ``to_torch`` views) are cut along their first dimension
    as ``torch.tensor_split`` does: contiguous rows, the first ``n % world_size``
    ranks one row more. Mappings and tuples are cut item by item.
    """
    from .exchange import to_torch

    if isinstance(batch, Mapping):
        return {k: shard(v, rank, world_size) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard(v, rank, world_size) for v in batch)
    tensor = batch if isinstance(batch, torch.Tensor) else to_torch(batch)
    return torch.tensor_split(tensor, world_size)[rank]


# -- DistributedDataParallel -----------------------------------------------------

# One DDP wrapper per module (NOTE [one wrapper per module]); weak, so the
# wrapper lives exactly as long as the BridgedModel or TrainStep that holds it.
_WRAPPERS: weakref.WeakValueDictionary[int, torch.nn.Module] = weakref.WeakValueDictionary()


def wrap(module: torch.nn.Module) -> torch.nn.Module | None:
    """wrap(module) -> DistributedDataParallel | None

    The module's ``DistributedDataParallel`` wrapper when a group of more than
    one process exists, ``None`` otherwise (or when nothing in it is trainable).
    Creating it is a collective (rank 0's parameters and buffers are broadcast
    to every rank), so every rank wraps the same module at the same point.

    NOTE [one wrapper per module]
    A module has at most one wrapper: bridging it and stepping it with a
    :class:`~torchbridge.train.TrainStep` share it, so each backward reduces
    the gradients once. The wrapper keeps DDP's defaults, notably
    ``gradient_as_bucket_view=False``: the averaged gradients are copied into
    each parameter's existing ``.grad``, so a bridged model's gradient buffers
    (NOTE [gradient buffers] in :mod:`torchbridge.bridged`) stay the memory
    Julia holds.
    """
    if not is_distributed():
        return None
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(module, DistributedDataParallel):
        return module
    existing = _WRAPPERS.get(id(module))
    if existing is not None and existing.module is module:
        return existing
    if not any(p.requires_grad for p in module.parameters()):
        return None
    devices = {t.device for t in module.parameters()}
    device = module_device(module)
    device_ids = (
        [device.index]
        if len(devices) == 1 and device is not None and device.type == "cuda"
        else None
    )
    try:
        ddp = DistributedDataParallel(module, device_ids=device_ids)
    except Exception as exc:
        failure = rank_failure(exc, "DistributedDataParallel")
        if failure is None:
            raise
        raise failure from exc
    _WRAPPERS[id(module)] = ddp
    return ddp
