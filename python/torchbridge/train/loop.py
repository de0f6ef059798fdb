"""``fit``: the training loop, with per-epoch metrics, early stopping and checkpoints.

Data is whatever a user already has: a torch ``DataLoader``, a map-style torch
``Dataset`` (batched here), or any re-iterable sequence of ``(x, y)`` batches
whose arrays may come from the other language (they are viewed without a copy,
see :func:`torchbridge.train.step.as_batch`).

Checkpoints are registry models: the best (or last) weights are registered
with :func:`torchbridge.register_local_model` and load back with
``torchbridge.load_model("local/<name>")``.

NOTE [sharding]
Under a process group of more than one process (:func:`torchbridge.distributed.init`)
``fit`` trains the module through DistributedDataParallel and gives each rank
its share of the data, the same way on every rank:

* a map-style ``Dataset``, or a ``DataLoader`` over one (rebuilt with the same
  batch size, workers and collate function): torch's ``DistributedSampler``,
  seed 0. In epoch ``e`` (counted from 0) the indices are
  ``torch.randperm(n)`` under a generator seeded with ``e`` (in order when the
  data is not shuffled), padded to a multiple of the world size by repeating
  the first ones, and rank ``r`` takes positions ``r, r + W, r + 2W ...``.
  ``batch_size`` is per process: a global batch holds ``W * batch_size``
  samples. A ``DataLoader`` whose sampler is a ``DistributedSampler`` already is
  used as it is (``set_epoch`` is called every epoch);
* any other sequence of ``(x, y)`` batches (a list, a ``DataLoader`` over an
  ``IterableDataset``): each batch is a global batch, which must be the same on
  every rank; rank ``r`` takes its rows ``torch.tensor_split(batch, W)[r]``.
  When ``W`` does not divide the batch, each rank's loss is weighted by
  ``W * rows / batch`` so that the averaged gradient is the whole batch's mean
  loss gradient. A batch with fewer samples than processes is skipped on every rank.

Validation data is split the same way, but without padding (a ``Dataset``:
rank ``r`` takes samples ``r, r + W ...``). Metrics and losses are summed over
the ranks, weighted by rows, so every rank reports the figures of the whole
data; early stopping therefore decides the same everywhere. Progress, the
summary lines and checkpoints come from rank 0 only; at the end of every
epoch each rank takes rank 0's buffers (BatchNorm statistics, which DDP
broadcasts before each forward), so all ranks validate and end with the same
model; the state dict saved is
the user's module's (no ``module.`` prefix), so a checkpoint loads in one
process.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import distributed
from ..devices import module_device
from ..errors import TrainingError
from ..exchange import to_torch
from ..precision import float32_loss
from .losses import loss_from_name
from .optimizers import optimizer_from_spec
from .schedules import schedule_from_spec
from .step import TrainStep, as_batch, as_inputs, call_model

__all__ = ["Checkpoint", "EarlyStopping", "FitHistory", "accuracy", "fit"]

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | float]


# -- metrics -----------------------------------------------------------------


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """accuracy(outputs, targets) -> Tensor: the fraction of the batch classified right.

    ``outputs`` are scores of shape ``(batch, classes, ...)``; ``targets`` are
    class indices of shape ``(batch, ...)`` or one-hot/probabilities shaped
    like ``outputs``.
    """
    predicted = outputs.argmax(dim=1)
    if targets.shape == outputs.shape:
        targets = targets.argmax(dim=1)
    return (predicted == targets).float().mean()


_METRICS: dict[str, Metric] = {"accuracy": accuracy}


def _metric_table(metrics: Iterable[str | Metric]) -> dict[str, Metric]:
    table: dict[str, Metric] = {}
    for metric in metrics:
        if isinstance(metric, str):
            if metric not in _METRICS:
                raise TrainingError(
                    f"fit: unknown metric {metric!r}; named metrics are "
                    f"{', '.join(sorted(_METRICS))}, or pass a callable metric(outputs, targets)."
                )
            table[metric] = _METRICS[metric]
        elif callable(metric):
            table[getattr(metric, "__name__", f"metric{len(table)}")] = metric
        else:
            raise TrainingError(f"fit: a metric is a name or a callable, got {metric!r}.")
    return table


# -- policies ----------------------------------------------------------------


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    ``monitor`` defaults to fit's monitored value (``valid_loss`` when there is
    validation data, else ``train_loss``); ``mode`` defaults to ``"max"`` for
    accuracies and ``"min"`` otherwise. With ``restore_best`` the model ends
    with the weights of its best epoch.
    """

    patience: int = 3
    monitor: str | None = None
    min_delta: float = 0.0
    mode: str | None = None
    restore_best: bool = True


@dataclass(frozen=True)
class Checkpoint:
    """Register the model's weights as the registry model ``local/<name>``.

    ``save="best"`` registers the weights of the best epoch by fit's monitored
    value, each time it improves; ``save="last"`` registers after every epoch.
    ``architecture`` is what rebuilds the module (a registry id such as
    ``"timm/resnet18"``); for timm models it defaults to the model's own
    architecture. The head size recorded is read from the weights (see
    :func:`~torchbridge.register_local_model`); ``num_classes``, when given, must
    agree with it.
    ``input_size`` (one sample in torch order, e.g. ``(3, 32, 32)``), ``mean``
    and ``std`` record what the model was trained on; each one not given is the
    architecture's. An existing ``local/<name>`` is replaced only with
    ``overwrite=True``. Both, and the input size and normalisation, are checked
    before training starts. ``extra`` holds other arguments of
    ``register_local_model`` (``description``, ``tags`` ...).
    """

    name: str
    architecture: str | None = None
    num_classes: int | None = None
    directory: str | None = None
    save: str = "best"
    overwrite: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)  # passed to register_local_model
    input_size: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass
class FitHistory:
    """What ``fit`` did: one row of metrics per epoch, and how it ended."""

    epochs: list[dict[str, float]]
    monitor: str
    best_epoch: int | None = None
    best_value: float | None = None
    stopped_early: bool = False
    checkpoint: Any = None  # the ModelEntry of the registered checkpoint, if any
    seconds: float = 0.0

    def __getitem__(self, key: str) -> list[float]:
        """history["valid_accuracy"] -> that value for every epoch."""
        return [row[key] for row in self.epochs if key in row]

    @property
    def last(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def _early_stopping(spec: Any) -> EarlyStopping | None:
    if spec is None or spec is False:
        return None
    if isinstance(spec, EarlyStopping):
        policy = spec
    elif isinstance(spec, int) and not isinstance(spec, bool):
        policy = EarlyStopping(patience=spec)
    elif isinstance(spec, Mapping):
        policy = EarlyStopping(**spec)
    else:
        raise TrainingError(
            f"fit: early_stopping is an EarlyStopping, a patience (int) or a dict, got {spec!r}."
        )
    patience = policy.patience
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
        raise TrainingError(
            f"fit: early stopping patience is a number of epochs >= 0, got {patience!r}."
        )
    return policy


def _checkpoint(spec: Any) -> Checkpoint | None:
    if spec is None:
        return None
    if isinstance(spec, Checkpoint):
        return spec
    if isinstance(spec, str):
        return Checkpoint(name=spec)
    if isinstance(spec, Mapping):
        return Checkpoint(**spec)
    raise TrainingError(f"fit: checkpoint is a Checkpoint, a name or a dict, got {spec!r}.")


def _is_better(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _mode_for(monitor: str) -> str:
    return "max" if "accuracy" in monitor else "min"


# -- data --------------------------------------------------------------------


def _batches(data: Any, *, batch_size: int, shuffle: bool, epochs: int, role: str) -> Iterable:
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle)
    if not isinstance(data, Iterable):
        raise TrainingError(
            f"fit: {role} must be a DataLoader, a Dataset or a sequence of (x, y) batches, "
            f"got {type(data).__name__}."
        )
    if iter(data) is data and (epochs > 1 or role == "valid_data"):
        raise TrainingError(
            f"fit: {role} is a one-shot iterator and would be empty after its first pass; "
            "pass a list of batches, a DataLoader or another re-iterable."
        )
    return data


def _split(batch: Any, role: str) -> tuple[Any, Any]:
    if isinstance(batch, Sequence) and len(batch) == 2:
        return batch[0], batch[1]
    raise TrainingError(
        f"fit: each batch of {role} must be a pair (x, y), got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, Sequence) else "")
        + "."
    )


class _Running:
    """Batch-size weighted sums, kept on the device until the epoch ends."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.count = 0

    def add(self, name: str, value: torch.Tensor | float, n: int) -> None:
        value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
        self.sums[name] = self.sums.get(name, 0.0) + value * n

    def means(self, prefix: str) -> dict[str, float]:
        if distributed.is_distributed():  # the whole data's figures (NOTE [sharding])
            names = list(self.sums)
            totals = distributed.all_sum(
                [self.count, *(float(self.sums[k]) for k in names)], what="fit"
            )
            return {f"{prefix}_{k}": v / max(totals[0], 1) for k, v in zip(names, totals[1:])}
        return {f"{prefix}_{k}": float(v) / max(self.count, 1) for k, v in self.sums.items()}


@dataclass(frozen=True)
class _Share:
    """This rank's rows of a global batch, and the weight of its loss (NOTE [sharding])."""

    x: Any
    y: Any
    weight: float


class _Strided(torch.utils.data.Sampler):
    """Samples ``rank, rank + W, rank + 2W ...`` of ``n``: validation shares, no padding."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class _Sharded:
    """This rank's share of ``fit``'s training or validation data (NOTE [sharding])."""

    def __init__(self, data: Iterable, *, train: bool, role: str):
        from torch.utils.data import (
            BatchSampler,
            DataLoader,
            DistributedSampler,
            IterableDataset,
            RandomSampler,
        )

        me = distributed.world()
        self.rank, self.world_size, self.train, self.role = me.rank, me.world_size, train, role
        self.loader: Any = None
        self.sequence: Iterable | None = None
        if (
            isinstance(data, DataLoader)
            and not isinstance(data.dataset, IterableDataset)
            and (isinstance(data.sampler, DistributedSampler) or data.batch_size is not None)
            and type(data.batch_sampler) is BatchSampler
        ):
            if isinstance(data.sampler, DistributedSampler):
                self.loader = data
            else:
                n = len(data.dataset)
                sampler = (
                    DistributedSampler(
                        data.dataset,
                        num_replicas=self.world_size,
                        rank=self.rank,
                        shuffle=isinstance(data.sampler, RandomSampler),
                        seed=0,
                    )
                    if train
                    else _Strided(n, self.rank, self.world_size)
                )
                self.loader = _with_sampler(data, sampler)
        else:
            self.sequence = data
        self._warned = False

    def set_epoch(self, epoch: int) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    @property
    def length(self) -> int | None:
        source = self.loader if self.loader is not None else self.sequence
        return len(source) if hasattr(source, "__len__") else None  # type: ignore[arg-type]

    def __iter__(self):
        if self.loader is not None:
            yield from self.loader
            return
        world_size = self.world_size
        for batch in self.sequence:  # type: ignore[union-attr]
            x, y = _split(batch, self.role)
            y = to_torch(y)
            rows = y.shape[0] if y.dim() else 0
            if rows < world_size:
                if self.train:  # every rank sees the same batch, so every rank skips it
                    self._warn(rows)
                    continue
            share_y = distributed.shard(y, self.rank, world_size)
            if share_y.shape[0] == 0:
                continue
            weight = 1.0 if rows % world_size == 0 else share_y.shape[0] * world_size / rows
            yield _Share(distributed.shard(x, self.rank, world_size), share_y, weight)

    def _warn(self, rows: int) -> None:
        if not self._warned and distributed.is_main():
            import warnings

            warnings.warn(
                f"fit: a batch of {rows} sample(s) cannot be split over {self.world_size} "
                "processes; it is skipped on every rank.",
                stacklevel=3,
            )
        self._warned = True


def _with_sampler(loader: Any, sampler: Any) -> Any:
    """A DataLoader like ``loader`` (batch size, workers, collate ...) drawing from ``sampler``."""
    from torch.utils.data import DataLoader

    kwargs: dict[str, Any] = {
        "batch_size": loader.batch_size,
        "sampler": sampler,
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "drop_last": loader.drop_last,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "persistent_workers": loader.persistent_workers,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, **kwargs)


def _evaluate(model, data, loss_fn, metrics, device) -> dict[str, float]:
    running = _Running()
    model.eval()
    with torch.no_grad():
        for batch in data:
            x, y = (batch.x, batch.y) if isinstance(batch, _Share) else _split(batch, "valid_data")
            inputs, targets = as_inputs(x, device), as_batch(y, device)
            outputs = call_model(model, inputs)
            n = outputs.shape[0]
            running.count += n
            running.add("loss", float32_loss(loss_fn, outputs, targets), n)
            for name, metric in metrics.items():
                running.add(name, metric(outputs, targets), n)
    return running.means("valid")


# -- checkpoints -------------------------------------------------------------


def _check_free(policy: Checkpoint) -> None:
    """Refuse, before any training, to save over an existing local model."""
    from .. import registry
    from ..errors import UnknownModelError

    if policy.overwrite:
        return
    try:
        entry = registry.model_info(f"local/{policy.name}")
    except UnknownModelError:
        return
    raise TrainingError(
        f"fit: the checkpoint name local/{policy.name} is taken (by "
        f"{entry.metadata.get('sidecar', 'an earlier model')}); pick another name or pass "
        "Checkpoint(..., overwrite=True)."
    )


def _architecture(model: torch.nn.Module, policy: Checkpoint) -> str:
    if policy.architecture is not None:
        return policy.architecture
    timm_arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if timm_arch is None:
        raise TrainingError(
            f"fit: checkpoint {policy.name!r} needs an architecture (a registry id such "
            "as 'timm/resnet18' that rebuilds the module); pass "
            "Checkpoint(name, architecture=...)."
        )
    return f"timm/{timm_arch}"


def _register_kwargs(policy: Checkpoint) -> dict[str, Any]:
    """``extra`` plus the input size and normalisation given as fields (not both ways)."""
    kwargs = dict(policy.extra)
    for key in ("input_size", "mean", "std"):
        value = getattr(policy, key)
        if value is None:
            continue
        if key in kwargs:
            raise TrainingError(
                f"fit: checkpoint {policy.name!r} has {key} both as a field and in extra; "
                "give it once."
            )
        kwargs[key] = value
    return kwargs


def _check_input_spec(model: torch.nn.Module, policy: Checkpoint) -> None:
    """Refuse, before any training, an input size or normalisation the registry would refuse."""
    from .. import registry
    from ..registry.sources.local_source import resolve_input_spec

    kwargs = _register_kwargs(policy)
    if not any(kwargs.get(key) is not None for key in ("input_size", "mean", "std")):
        return
    resolve_input_spec(
        registry.model_info(_architecture(model, policy)),
        kwargs.get("input_size"),
        kwargs.get("mean"),
        kwargs.get("std"),
        what=f"fit: checkpoint {policy.name!r}",
    )


def _check_head(model: torch.nn.Module, policy: Checkpoint) -> None:
    """Refuse, before any training, a num_classes that the model's head does not have."""
    from ..errors import RemoteCodeError
    from ..registry.core import get_registry
    from ..registry.heads import classifier_names, held_classes

    if policy.num_classes is None:
        return
    try:
        names = get_registry().classifier(_architecture(model, policy))
    except RemoteCodeError:
        # naming the head would import the architecture's repository code, which fit was
        # not told to trust (NOTE [trust]): read it from the model being trained instead
        names = classifier_names(model)
    held = held_classes(model.state_dict(), names)
    if held is not None and held != policy.num_classes:
        raise TrainingError(
            f"fit: checkpoint {policy.name!r} has num_classes={policy.num_classes}, but the "
            f"model's head ({names[0]}) has {held} outputs; give {held}, or leave it out."
        )


def _register(model: torch.nn.Module, policy: Checkpoint, *, overwrite: bool) -> Any:
    from .. import registry

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return registry.register_local_model(
        policy.name,
        state,
        architecture=_architecture(model, policy),
        num_classes=policy.num_classes,  # None: read from the weights' head
        directory=policy.directory,
        overwrite=overwrite,
        **_register_kwargs(policy),
    )


# -- the loop ----------------------------------------------------------------


def _resolve_device(model: torch.nn.Module, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    placed = module_device(model)
    if placed is not None and placed.type != "cpu":
        return placed
    if distributed.is_distributed():  # this rank's device, from its local rank
        return distributed.world().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit(
    model: torch.nn.Module,
    train_data: Any,
    valid_data: Any = None,
    *,
    epochs: int,
    optimizer: Mapping[str, Any] | torch.optim.Optimizer,
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    metrics: Iterable[str | Metric] = (),
    schedule: Mapping[str, Any] | torch.optim.lr_scheduler.LRScheduler | None = None,
    early_stopping: EarlyStopping | int | Mapping[str, Any] | None = None,
    checkpoint: Checkpoint | str | Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    mixed_precision: bool | str | torch.dtype = False,
    batch_size: int = 32,
) -> FitHistory:
    """fit(model, train_data, valid_data=None, *, epochs, optimizer, loss, ...) -> FitHistory

    Train ``model`` for up to ``epochs`` passes over ``train_data``.

    Args:
        model: the torch module; moved to ``device`` (default: where its
            parameters are, else CUDA when available, else the CPU).
        train_data: a DataLoader, a map-style Dataset (batched by ``batch_size``,
            shuffled), or a re-iterable of ``(x, y)`` batches of tensors or
            foreign arrays.
        valid_data: the same kinds, evaluated after every epoch.
        optimizer: an Optimisers.jl rule spec (see
            :func:`~torchbridge.train.optimizer_from_spec`) or a torch optimiser.
        loss: a Flux loss name (see :func:`~torchbridge.train.loss_from_name`)
            or a callable ``loss(outputs, targets)``.
        metrics: names (``"accuracy"``) or callables ``metric(outputs, targets)``,
            averaged over each epoch for training and validation data.
        schedule: a schedule spec or torch scheduler, stepped after every batch.
        early_stopping: an :class:`EarlyStopping`, a patience, or its fields as a dict.
        checkpoint: a :class:`Checkpoint`, a name, or its fields as a dict.
        progress: show a progress bar per epoch and a summary line after it.
        mixed_precision: autocast the forward pass: ``True``, ``"bfloat16"`` or
            ``"float16"`` (see :class:`TrainStep`). Losses are computed in float32.

    Each row of the history holds ``epoch``, ``lr``, ``seconds``,
    ``train_loss``, ``train_<metric>`` and, with validation data,
    ``valid_loss`` and ``valid_<metric>``. The monitored value is
    ``valid_loss`` (``train_loss`` without validation data) unless
    ``early_stopping.monitor`` says otherwise.

    Raises:
        TrainingError: unusable data, metric, checkpoint or early-stopping settings.
        UnknownOptimizerError, UnknownLossError, UnknownScheduleError: bad specs.
        InputSpecError: the checkpoint's ``input_size``, ``mean`` or ``std`` is not valid.
    """
    if int(epochs) < 1:
        raise TrainingError(f"fit: epochs must be at least 1, got {epochs!r}.")
    started = time.perf_counter()
    device = _resolve_device(model, device)
    model.to(device)
    # frozen parameters (a LoRA model's base) get no optimiser state
    opt = optimizer_from_spec(optimizer, [p for p in model.parameters() if p.requires_grad])
    scheduler = schedule_from_spec(schedule, opt) if schedule is not None else None
    loss_fn = loss_from_name(loss)
    metric_table = _metric_table(metrics)
    stopping = _early_stopping(early_stopping)
    saving = _checkpoint(checkpoint)
    if saving is not None:
        if saving.save not in ("best", "last"):
            raise TrainingError(f"fit: Checkpoint.save is 'best' or 'last', got {saving.save!r}.")
        _architecture(model, saving)
        _check_free(saving)
        _check_input_spec(model, saving)
        _check_head(model, saving)
    train_batches = _batches(
        train_data, batch_size=batch_size, shuffle=True, epochs=epochs, role="train_data"
    )
    valid_batches = (
        _batches(valid_data, batch_size=batch_size, shuffle=False, epochs=epochs, role="valid_data")
        if valid_data is not None
        else None
    )
    monitor = (stopping.monitor if stopping and stopping.monitor else None) or (
        "valid_loss" if valid_batches is not None else "train_loss"
    )
    mode = (stopping.mode if stopping and stopping.mode else None) or _mode_for(monitor)
    min_delta = stopping.min_delta if stopping else 0.0
    keep_best = stopping is not None and stopping.restore_best
    if distributed.is_distributed():  # NOTE [sharding]
        train_batches = _Sharded(train_batches, train=True, role="train_data")
        if valid_batches is not None:
            valid_batches = _Sharded(valid_batches, train=False, role="valid_data")
    progress = progress and distributed.is_main()

    step = TrainStep(model, opt, loss_fn, device=device, mixed_precision=mixed_precision)
    history = FitHistory(epochs=[], monitor=monitor)
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    for epoch in range(1, int(epochs) + 1):
        epoch_started = time.perf_counter()
        if isinstance(train_batches, _Sharded):
            train_batches.set_epoch(epoch - 1)
        row = {"epoch": float(epoch), "lr": float(opt.param_groups[0]["lr"])}
        row.update(
            _train_epoch(
                model, step, train_batches, metric_table, scheduler, epoch, epochs, progress
            )
        )
        distributed.broadcast_buffers(model, what="fit")  # rank 0's statistics everywhere
        if valid_batches is not None:
            row.update(_evaluate(model, valid_batches, loss_fn, metric_table, device))
        row["seconds"] = time.perf_counter() - epoch_started
        history.epochs.append(row)
        if monitor not in row:
            raise TrainingError(
                f"fit: cannot monitor {monitor!r}; each epoch records {', '.join(sorted(row))}."
            )
        improved = _is_better(row[monitor], history.best_value, mode, min_delta)
        if improved:
            history.best_epoch, history.best_value = epoch, row[monitor]
            stale = 0
            if keep_best:
                best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if saving is not None and (saving.save == "last" or improved):
            # later saves of the same fit replace its own earlier ones
            overwrite = saving.overwrite or history.checkpoint is not None
            if distributed.is_main():  # one writer; the others wait until it is written
                history.checkpoint = _register(model, saving, overwrite=overwrite)
            distributed.barrier(what="fit: checkpoint")
        if progress:
            _print_summary(row, epochs)
        # an epoch that improved never stops training, even with patience 0
        if stopping is not None and not improved and stale >= stopping.patience:
            history.stopped_early = True
            break
    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
    history.seconds = time.perf_counter() - started
    return history


def _train_epoch(model, step, batches, metrics, scheduler, epoch, epochs, progress):
    from tqdm.auto import tqdm

    model.train()
    running = _Running()
    bar = tqdm(
        batches,
        desc=f"epoch {epoch}/{epochs}",
        disable=not progress,
        leave=False,
        unit="batch",
        total=batches.length
        if isinstance(batches, _Sharded)
        else len(batches)
        if hasattr(batches, "__len__")
        else None,
    )
    for i, batch in enumerate(bar):
        if isinstance(batch, _Share):
            x, y, weight = batch.x, batch.y, batch.weight
        else:
            (x, y), weight = _split(batch, "train_data"), 1.0
        result = step(x, y) if weight == 1.0 else step(x, y, weight=weight)
        n = result.outputs.shape[0]
        running.count += n
        running.add("loss", result.loss, n)
        for name, metric in metrics.items():
            running.add(name, metric(result.outputs, result.targets), n)
        if scheduler is not None:
            scheduler.step()
        if progress and i % 10 == 0:
            bar.set_postfix(loss=f"{float(result.loss):.4f}")
    bar.close()
    if running.count == 0:
        raise TrainingError("fit: train_data yielded no batches.")
    return running.means("train")


def _print_summary(row: dict[str, float], epochs: int) -> None:
    from tqdm.auto import tqdm

    parts = [f"epoch {int(row['epoch'])}/{epochs}"]
    parts += [f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds", "lr")]
    parts.append(f"{row['seconds']:.1f}s")
    tqdm.write("  ".join(parts))
