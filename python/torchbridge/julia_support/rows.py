"""The registry as plain rows, FastAI.jl's model registry, and feature variants.

The registry is imported by each call, not with this module: wrapping a model
from Julia never pays for the registry's sources.
"""

from __future__ import annotations

from typing import Any

from ..bridged import BridgedModel

__all__ = [
    "ROW_FIELDS",
    "entry_row",
    "fastai_rows",
    "feature_variant",
    "info_row",
    "registry_rows",
    "search_rows",
]

ROW_FIELDS = (
    "id",
    "source",
    "name",
    "task",
    "description",
    "pretrained",
    "cached",
    "input_size",
    "julia_input_size",
    "mean",
    "std",
    "num_classes",
    "license",
    "tags",
    "feature_channels",
)


def entry_row(entry: Any) -> dict[str, Any]:
    """entry_row(entry) -> dict: a ``ModelEntry`` as the plain row TorchBridge.jl shows.

    Keys are :data:`ROW_FIELDS` (``feature_channels`` is ``None`` here: see
    :func:`info_row`); sizes are lists (``julia_input_size`` is the
    reverse of ``input_size``), ``cached`` says whether the pretrained weights
    are on this machine, missing values are ``None``.
    """
    d = entry.to_dict()
    weights = d.get("weights") or {}
    # feature_channels is not an entry field: None here, info_row sizes it
    row = {key: d.get(key) for key in ROW_FIELDS if key != "cached"}
    row["cached"] = bool(weights.get("cached", False))
    row["tags"] = list(d.get("tags") or [])
    return row


def registry_rows(
    pattern: str | None = None,
    *,
    source: str | None = None,
    pretrained: bool | None = None,
    task: str | None = None,
) -> list[dict[str, Any]]:
    """registry_rows(pattern=None, *, source=None, pretrained=None, task=None) -> list of rows."""
    from .. import registry

    entries = registry.list_models(pattern, source=source, pretrained=pretrained, task=task)
    return [entry_row(e) for e in entries]


def search_rows(query: str, *, limit: int = 20) -> list[dict[str, Any]]:
    """search_rows(query, *, limit=20) -> list of rows, best match first."""
    from .. import registry

    return [entry_row(e) for e in registry.search_models(query, limit=limit)]


def info_row(model_id: str) -> dict[str, Any]:
    """info_row(model_id) -> row: what the registry knows about one model.

    The row of :func:`entry_row` plus ``feature_channels``, the channels of its
    feature-map variant (``load_model(id, features=True)``; ``None`` as
    :func:`torchbridge.feature_channels` says), which costs one build of the
    model on the ``meta`` device.
    """
    from .. import registry

    row = entry_row(registry.model_info(model_id))
    row["feature_channels"] = registry.feature_channels(model_id)
    return row


# -- FastAI.jl's model registry ----------------------------------------------------


def fastai_rows(*, source: str = "timm") -> dict[str, list[str]]:
    """fastai_rows(*, source="timm") -> dict of columns ``id``, ``description``, ``checkpoint``

    The models TorchBridge.jl's FastAI extension adds to FastAI.jl's model
    registry: every image classifier of ``source`` that has published weights
    under a pretrained tag (``timm/resnet18.a1_in1k``, checkpoint ``"a1_in1k"``).
    Untagged architecture names (``timm/resnet18``, which loads its default
    tag) and models without weights are left out, so each row names exactly
    one set of weights. Columns rather than rows: Julia converts three lists
    instead of one dict per model.
    """
    from .. import registry

    ids, descriptions, checkpoints = [], [], []
    for e in registry.list_models(source=source, pretrained=True, task="image-classification"):
        _, _, tag = e.name.partition(".")
        if not tag:
            continue
        ids.append(e.id)
        descriptions.append(e.description)
        checkpoints.append(tag)
    return {"id": ids, "description": descriptions, "checkpoint": checkpoints}


def feature_variant(model: BridgedModel, *, model_id: str) -> BridgedModel:
    """feature_variant(model, *, model_id) -> BridgedModel

    The bridged module's feature-map variant (what ``load_model(model_id,
    features=True)`` returns: no pooling, no classifier; NOTE [feature
    variants] in :mod:`torchbridge.registry.features`), bridged anew. ``model``
    is closed first: its parameter list changes, so the Julia arrays over it
    must not be used again.

    Raises:
        FeaturesUnavailableError: the module has no known feature variant;
            ``model`` is left open.
    """
    from ..bridged import bridge, bridged_model
    from ..registry.features import feature_extractor

    model = bridged_model(model, "feature_variant")
    features = feature_extractor(model.module, model_id=model_id)
    model.close()
    return bridge(features)
