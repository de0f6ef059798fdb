"""``ModelEntry`` and ``WeightsInfo``: what the registry knows about one model.

These are plain frozen dataclasses. The Julia package reads their attribute
names, and ``to_dict()`` is what ``torchbridge ... --json`` prints, so the field
names are part of the public contract.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelEntry", "WeightsInfo"]


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's pretrained weights come from, and whether they are on this machine.

    Attributes:
        location: Where the weights are published: ``hf-hub:<repo>`` for the
            Hugging Face Hub, a URL, or a local file path.
        filename: The file name the weights are stored under (``model.safetensors``,
            ``resnet18-f37072fd.pth`` ...), when known.
        path: The local file when ``cached`` is true; otherwise the file or folder
            where the registry would look for it (``None`` when unknown).
        cached: Whether the file is present locally, so loading needs no network.
        sha256: The published sha256 (or its leading hex digits, as encoded in
            torch.hub file names), when the source publishes one.
        alternatives: Other published locations (e.g. a URL mirror of a Hub repo).
    """

    location: str
    filename: str | None = None
    path: str | None = None
    cached: bool = False
    sha256: str | None = None
    alternatives: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """to_dict() -> dict: a JSON-ready copy of the fields."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry.

    Attributes:
        id: ``source/name``, e.g. ``timm/resnet18.a1_in1k``; what ``load_model`` takes.
        source: The source that provides the model (``timm``, ``hub``, ``torchvision``,
            ``local``, or a plugin's name).
        name: The name within the source (``resnet18.a1_in1k``).
        task: ``image-classification``, ``feature-extraction``, ``object-detection`` ...
            or ``unknown``.
        description: One line saying what the model is.
        pretrained: Whether pretrained weights are published for this entry.
        weights: Where those weights come from and whether they are cached
            (``None`` when there are none).
        input_size: The expected input of one sample in torch order, ``(C, H, W)``
            for images; ``None`` when the source does not say.
        julia_input_size: The same size in Julia order (reversed), ``(W, H, C)``.
        mean: Per-channel normalisation mean, when known.
        std: Per-channel normalisation standard deviation, when known.
        num_classes: Outputs of the classifier head, when known (0 for a headless model).
        license: The weights' license, when the source publishes it.
        tags: Short keywords (architecture family, training data ...).
        metadata: Anything else the source knows (kept out of equality and hashing).
    """

    id: str
    source: str
    name: str
    task: str = "unknown"
    description: str = ""
    pretrained: bool = False
    weights: WeightsInfo | None = None
    input_size: tuple[int, ...] | None = None
    julia_input_size: tuple[int, ...] | None = field(init=False)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    license: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        # Julia arrays are column-major: their dims are the reverse of torch's.
        julia = tuple(reversed(self.input_size)) if self.input_size is not None else None
        object.__setattr__(self, "julia_input_size", julia)

    def to_dict(self) -> dict[str, Any]:
        """to_dict() -> dict: a JSON-ready copy of the fields (tuples become lists)."""
        out = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["weights"] = self.weights.to_dict() if self.weights is not None else None
        return out

    def with_weights(self, weights: WeightsInfo | None) -> ModelEntry:
        """with_weights(weights) -> ModelEntry: a copy with other weights information."""
        return dataclasses.replace(self, weights=weights)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)
