"""The model registry: timm, torch.hub, torchvision and local models under one set of ids.

Ids are ``source/name``: ``timm/resnet18.a1_in1k``, ``torchvision/resnet18``,
``hub/<repo>/<entry>``, ``local/<name>``. See ``docs/registry.md``.
"""

from __future__ import annotations

from .core import (
    feature_channels,
    list_models,
    load_model,
    model_info,
    register_local_model,
    register_source,
    search_models,
)
from .entry import ModelEntry
from .entry import WeightsInfo as WeightsInfo
from .sources import ModelSource as ModelSource
from .sources.hub_source import add_hub_repo as add_hub_repo

__all__ = [
    "ModelEntry",
    "feature_channels",
    "list_models",
    "load_model",
    "model_info",
    "register_local_model",
    "register_source",
    "search_models",
]
