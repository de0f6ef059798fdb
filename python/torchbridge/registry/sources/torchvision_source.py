"""The torchvision source: its model builders and their weight enums.

Ids are ``torchvision/<builder>`` (the builder's ``DEFAULT`` weights) and
``torchvision/<builder>.<WEIGHTS>`` (one member of its weights enum, e.g.
``torchvision/resnet50.IMAGENET1K_V2``). Weights live in torch.hub's
``checkpoints`` folder under their URL's file name, which carries a sha256
prefix that is checked.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...errors import RegistryError, WeightsNotFoundError
from ..entry import ModelEntry, WeightsInfo
from ..heads import held_classes, replace_classifier
from ..paths import torch_hub_checkpoints_dir
from ..weights import (
    hash_prefix_from_filename,
    load_into_model,
    load_state_dict,
    misfit_error,
    resolve_weights_file,
    url_filename,
)
from .base import TableSource

__all__ = ["TorchvisionSource"]

_TASK_BY_MODULE = (
    ("torchvision.models.detection", "object-detection"),
    ("torchvision.models.segmentation", "semantic-segmentation"),
    ("torchvision.models.video", "video-classification"),
    ("torchvision.models.optical_flow", "optical-flow"),
)

# serialises the short swap of torchvision's weight fetcher, see _serving_state_dict
_FETCHER_LOCK = threading.Lock()


class TorchvisionSource(TableSource):
    """Models from ``torchvision.models`` (when torchvision imports)."""

    name = "torchvision"
    requirement = "torchvision (pip install torchvision)"

    def available(self) -> bool:
        if importlib.util.find_spec("torchvision") is None:
            return False
        try:
            import torchvision.models  # noqa: F401  (a broken install must not break listing)
        except Exception:
            return False
        return True

    def build_table(self) -> dict[str, ModelEntry]:
        return _build_static()

    def cache_folders(self) -> tuple[Path, ...]:
        return (torch_hub_checkpoints_dir(),)

    def hints(self, item: ModelEntry) -> list[tuple[int, str]]:
        info = item.weights
        return [(0, info.filename)] if info is not None and info.filename else []

    def finish(self, item: ModelEntry, hinted: bool) -> ModelEntry:
        info = item.weights
        if info is None or info.filename is None:
            return item
        path = str(torch_hub_checkpoints_dir() / info.filename)
        if info.cached == hinted and info.path == path:
            return item
        return replace(item, weights=replace(info, cached=hinted, path=path))

    def classifier(self, entry: ModelEntry) -> tuple[str, ...]:
        if entry.task != "image-classification":
            return ()  # detection, segmentation ... heads are not one layer
        return super().classifier(entry)

    def build(self, entry: ModelEntry, *, num_classes: int | None, **kwargs: Any):
        from torchvision.models import get_model

        builder = entry.name.partition(".")[0]
        if num_classes == 0:
            # torchvision would build a 0-output Linear; remove the classifier instead
            model = get_model(builder, weights=None, **kwargs)
            return replace_classifier(model, 0, model_id=entry.id, names=self.classifier(entry))
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return get_model(builder, weights=None, **kwargs)

    def build_pretrained(
        self, entry: ModelEntry, *, weights: Path | None, trust_pickle: bool, **kwargs: Any
    ):
        from torchvision.models import get_model, get_model_weights

        builder, _, tag = entry.name.partition(".")
        member = _weights_member(builder, tag, get_model_weights)
        if member is None and weights is None:
            raise WeightsNotFoundError(
                f"{entry.id} has no published weights in torchvision; pass weights=PATH."
            )
        resolved = resolve_weights_file(
            entry.id, explicit=weights, url=member.url if member is not None else None
        )
        source = str(resolved.path)
        state = load_state_dict(resolved.path, trust_pickle=trust_pickle)
        held = held_classes(state, self.classifier(entry))
        if member is None or (held is not None and held != _classes(member)):
            # not the published layout (a finetuned head): the untrained builder at that size
            return self.build_holding(entry, state, source=source, **kwargs)
        kwargs.setdefault("progress", False)
        try:
            with _serving_state_dict(member.url, state) as served:
                if served:
                    return get_model(builder, weights=member, **kwargs)
                # torchvision without the fetcher we expect: plain strict load
                model = get_model(builder, weights=None, num_classes=_classes(member), **kwargs)
                load_into_model(model, state, source=source)
                return model
        except RuntimeError as err:
            reference = get_model(builder, weights=None, num_classes=_classes(member))
            raise misfit_error(
                reference, state, source=source, model_id=entry.id, cause=err
            ) from err


@contextlib.contextmanager
def _serving_state_dict(url: str, state: dict[str, Any]) -> Iterator[bool]:
    """While active, torchvision's builders get ``state`` instead of fetching ``url``.

    NOTE: torchvision builders configure the model from its weights' metadata
    (number of classes, input normalisation, quantisation backend ...) and then
    fetch the weights with ``torch.load(weights_only=False)``. Serving the
    tensors we already loaded safely keeps the first and replaces the second.
    Yields False if torchvision does not fetch weights the way we expect.
    """
    try:
        from torchvision.models import _api
    except ImportError:
        yield False
        return
    original = getattr(_api, "load_state_dict_from_url", None)
    if original is None:
        yield False
        return

    def serve(requested: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if requested != url:
            raise RegistryError(f"torchvision asked for other weights ({requested}) than {url}")
        return state

    with _FETCHER_LOCK:
        _api.load_state_dict_from_url = serve
        try:
            yield True
        finally:
            _api.load_state_dict_from_url = original


def _weights_member(builder: str, tag: str, get_model_weights: Any) -> Any:
    try:
        enum = get_model_weights(builder)
    except ValueError:
        return None
    if not tag:
        return getattr(enum, "DEFAULT", None) or next(iter(enum), None)
    return enum[tag]


def _classes(member: Any) -> int | None:
    categories = member.meta.get("categories")
    return len(categories) if categories else member.meta.get("num_classes")


def _build_static() -> dict[str, ModelEntry]:
    from torchvision.models import get_model_builder, get_model_weights, list_models

    out: dict[str, ModelEntry] = {}
    for builder_name in list_models():
        builder = get_model_builder(builder_name)
        module = getattr(builder, "__module__", "")
        task = next((t for prefix, t in _TASK_BY_MODULE if module.startswith(prefix)), None)
        task = task or "image-classification"
        quantized = module.startswith("torchvision.models.quantization")
        try:
            members = list(get_model_weights(builder_name))
        except ValueError:
            members = []
        default = None
        if members:
            enum = type(members[0])
            default = getattr(enum, "DEFAULT", members[0])
        out[builder_name] = _entry(builder_name, builder_name, default, task, quantized, None)
        for member in members:
            name = f"{builder_name}.{member.name}"
            out[name] = _entry(name, builder_name, member, task, quantized, member.name)
    return out


def _entry(name: str, builder: str, member: Any, task: str, quantized: bool, tag: str | None):
    tags = ["torchvision", task]
    if quantized:
        tags.append("quantized")
    if member is None:
        return ModelEntry(
            id=f"torchvision/{name}",
            source="torchvision",
            name=name,
            task=task,
            description=(
                f"{builder}: torchvision {task.replace('-', ' ')} model, no published weights"
            ),
            pretrained=False,
            tags=tuple(tags),
        )
    meta = member.meta
    transform = _transform_settings(member.transforms)
    crop = transform.get("crop_size")
    if isinstance(crop, (list, tuple)):
        crop = crop[0] if len(crop) == 1 else tuple(crop)
    input_size: tuple[int, ...] | None = None
    if task == "image-classification" and isinstance(crop, int):
        input_size = (3, crop, crop)
    tags.extend(member.name.lower().split("_"))
    if "imagenet" in member.name.lower():
        tags.append("imagenet")
    docs = " ".join(str(meta.get("_docs", "")).split())
    weight_name = f"{type(member).__name__}.{member.name}"
    description = f"{builder}: torchvision {task.replace('-', ' ')} model, weights {weight_name}"
    if docs:
        description += ". " + docs.split(". ")[0].rstrip(".")
    filename = url_filename(member.url)
    metadata = {k: meta[k] for k in ("num_params", "min_size", "recipe", "_metrics") if k in meta}
    metadata["builder"] = builder
    metadata["weights_enum"] = weight_name
    mean, std = transform.get("mean"), transform.get("std")
    return ModelEntry(
        id=f"torchvision/{name}",
        source="torchvision",
        name=name,
        task=task,
        description=description,
        pretrained=True,
        weights=WeightsInfo(
            location=member.url,
            filename=filename,
            path=None,
            cached=False,
            sha256=hash_prefix_from_filename(filename),
        ),
        input_size=input_size,
        mean=tuple(mean) if mean else None,
        std=tuple(std) if std else None,
        num_classes=_classes(member),
        tags=tuple(dict.fromkeys(tags)),
        metadata=metadata,
    )


def _transform_settings(transforms: Any) -> dict[str, Any]:
    """The keyword settings of a weights' preset transform, without building it."""
    if not isinstance(transforms, functools.partial):
        return {}
    settings: dict[str, Any] = {}
    try:
        for pname, param in inspect.signature(transforms.func).parameters.items():
            if param.default is not inspect.Parameter.empty:
                settings[pname] = param.default
    except (TypeError, ValueError):
        pass
    settings.update(transforms.keywords)
    return settings
