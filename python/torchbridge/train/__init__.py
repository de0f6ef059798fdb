"""Training torch models with the vocabulary of Flux and Optimisers.jl.

- :func:`optimizer_from_spec` — Optimisers.jl rules (``{"rule": "Adam", "eta": 1e-3}``)
  as torch optimisers performing exactly the same update;
- :func:`loss_from_name` — Flux losses by name (``"logitcrossentropy"``, ...);
- :func:`schedule_from_spec` — learning-rate schedules (step, cosine, one-cycle, warm-up);
- :class:`TrainStep` — one torch-native step over a batch from either language;
- :func:`fit` — the loop: progress bar, per-epoch metrics, early stopping, and
  checkpoints registered as ``local/...`` models.
"""

from __future__ import annotations

from .loop import Checkpoint, EarlyStopping, FitHistory, accuracy, fit
from .losses import (
    binarycrossentropy,
    crossentropy,
    logitbinarycrossentropy,
    logitcrossentropy,
    loss_from_name,
    mse,
    supported_losses,
)
from .optimizers import optimizer_from_spec, supported_rules
from .schedules import schedule_factor, schedule_from_spec, supported_schedules
from .step import StepResult, TrainStep, as_batch

__all__ = [
    "Checkpoint",
    "EarlyStopping",
    "FitHistory",
    "StepResult",
    "TrainStep",
    "accuracy",
    "as_batch",
    "binarycrossentropy",
    "crossentropy",
    "fit",
    "logitbinarycrossentropy",
    "logitcrossentropy",
    "loss_from_name",
    "mse",
    "optimizer_from_spec",
    "schedule_factor",
    "schedule_from_spec",
    "supported_losses",
    "supported_rules",
    "supported_schedules",
]
