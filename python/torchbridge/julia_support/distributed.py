"""Data-parallel training from Julia: the process group, with plain results.

``TorchBridge.init_distributed()`` calls :func:`init_distributed` before it
loads or bridges a model; from then on ``bridge`` wraps every module in
``DistributedDataParallel`` and each pullback leaves the average gradient over
the ranks in the model's gradient buffers (NOTE [bridged models under DDP] in
:mod:`torchbridge.bridged`), so Optimisers.jl, or a ``TorchOptimizer``, takes the
same step on every rank. The rank comes from the launcher's variables
(``mpiexecjl``, ``srun``, or torchrun's set by hand; NOTE [launchers] in
:mod:`torchbridge.distributed`): MPI.jl is not needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import distributed

__all__ = [
    "destroy_distributed",
    "distributed_all_sum",
    "distributed_barrier",
    "distributed_world",
    "init_distributed",
    "shard_bounds",
]


def init_distributed(backend: str | None = None, *, timeout: float | None = None) -> dict[str, Any]:
    """init_distributed(backend=None, *, timeout=None) -> dict

    :func:`torchbridge.distributed.init`, with the world as plain values:
    ``rank``, ``world_size``, ``local_rank``, ``local_world_size`` (ints),
    ``device`` (``"cuda:1"``, ``"cpu"``), ``device_type`` (``"cuda"``/``"cpu"``),
    ``device_index`` (-1 on the CPU), ``backend`` (``"nccl"``, ``"gloo"``, or
    ``None`` in a world of one) and ``launcher``. ``timeout`` is in seconds.
    """
    return distributed.init(backend, timeout=timeout).to_dict()


def destroy_distributed() -> None:
    """destroy_distributed() -> None: leave the process group; idempotent."""
    distributed.destroy()


def distributed_world() -> dict[str, Any]:
    """distributed_world() -> dict: the current world (a world of one without a group)."""
    return distributed.world().to_dict()


def distributed_barrier() -> None:
    """distributed_barrier() -> None: wait for every rank (bounded by the group's timeout)."""
    distributed.barrier(what="distributed_barrier")


def distributed_all_sum(values: Sequence[float]) -> list[float]:
    """distributed_all_sum(values) -> list: each value summed over the ranks (for metrics)."""
    return distributed.all_sum(list(values), what="distributed_all_sum")


def shard_bounds(n: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """shard_bounds(n, rank=None, world_size=None) -> (start, stop)

    This rank's rows of a global batch of ``n`` samples, 0-based and half-open
    (Julia: ``start+1:stop``): the rows ``torch.tensor_split`` gives it, the
    split ``fit`` uses (NOTE [sharding] in :mod:`torchbridge.train.loop`). The
    rank and world size default to this process's.
    """
    me = distributed.world()
    rank = me.rank if rank is None else int(rank)
    world_size = me.world_size if world_size is None else int(world_size)
    base, extra = divmod(int(n), world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
