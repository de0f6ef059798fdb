"""``ModelEntry`` and ``WeightsInfo``: what the registry knows about one model.

These are plain frozen dataclasses. The Julia package reads their attribute
names, and ``to_dict()`` is what ``torchbridge ... --json`` prints, so the field
names are part of the public contract.

NOTE [broken entries]
    One malformed file never breaks the registry. A ``ModelEntry`` checks the
    type of every field when it is made (sequences become tuples, numbers
    plain ints and floats); anything else is a ``TypeError`` or ``ValueError``
    naming the field. A source that makes entries from files (local sidecars,
    Hugging Face ``config.json``, ``hubconf.py``) reads each file through
    :func:`read_guarded`, which turns whatever goes wrong while reading it and
    making its entries (ill-typed fields, JSON nested too deep to parse, a
    ``hubconf.py`` too deep for ``ast``) into a :class:`BrokenEntryError`
    naming the file. The source lists that error in place of the entry, and
    raises it from ``get``: the registry skips it in every listing with one
    warning (``torchbridge doctor`` shows it), and ``model_info`` or
    ``load_model`` of its id raise it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BrokenEntryError

__all__ = ["ModelEntry", "WeightsInfo", "read_guarded"]

T = TypeVar("T")


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
        # NOTE [broken entries]: every field has its declared type, or the entry is not made
        for name in ("id", "source", "name", "task", "description"):
            if not isinstance(getattr(self, name), str):
                _wrong(name, "a str", getattr(self, name))
        if not isinstance(self.pretrained, bool):
            _wrong("pretrained", "true or false", self.pretrained)
        if self.weights is not None and not isinstance(self.weights, WeightsInfo):
            _wrong("weights", "a WeightsInfo or None", self.weights)
        if self.license is not None and not isinstance(self.license, str):
            _wrong("license", "a str or None", self.license)
        if not isinstance(self.metadata, dict):
            _wrong("metadata", "a dict", self.metadata)
        size = _sequence("input_size", self.input_size, _positive_int, "positive ints")
        fix = object.__setattr__
        fix(self, "input_size", size)
        fix(self, "mean", _sequence("mean", self.mean, _finite_float, "finite numbers"))
        fix(self, "std", _sequence("std", self.std, _finite_float, "finite numbers"))
        fix(self, "tags", _sequence("tags", self.tags, _string, "strings", allow_none=False))
        if self.num_classes is not None:
            fix(self, "num_classes", _count("num_classes", self.num_classes))
        # Julia arrays are column-major: their dims are the reverse of torch's.
        fix(self, "julia_input_size", tuple(reversed(size)) if size is not None else None)

    def to_dict(self) -> dict[str, Any]:
        """to_dict() -> dict: a JSON-ready copy of the fields (tuples become lists)."""
        out = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["weights"] = self.weights.to_dict() if self.weights is not None else None
        return out

    def with_weights(self, weights: WeightsInfo | None) -> ModelEntry:
        """with_weights(weights) -> ModelEntry: a copy with other weights information."""
        return dataclasses.replace(self, weights=weights)


def _wrong(name: str, expected: str, value: Any) -> None:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise TypeError(f"{name} must be {expected}, got {shown}")


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        _wrong(name, "an int >= 0", value)
    return int(value)


def _positive_int(value: Any) -> int | None:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0
    return int(value) if ok else None


def _finite_float(value: Any) -> float | None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _sequence(
    name: str,
    value: Any,
    item: Callable[[Any], Any],
    items: str,
    *,
    allow_none: bool = True,
) -> tuple[Any, ...] | None:
    """A list or tuple of ``items`` as a tuple (each converted by ``item``, which gives
    ``None`` for a wrong one), or ``None`` where allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, (list, tuple)):
        converted = tuple(item(v) for v in value)
        if all(v is not None for v in converted):
            return converted
    _wrong(name, f"a list of {items}" + (" or None" if allow_none else ""), value)
    return None  # not reached


def read_guarded(path: str | Path, read: Callable[[], T]) -> T | BrokenEntryError:
    """read_guarded(path, read) -> the result of ``read()``, or a BrokenEntryError

    Read one description file into entries (NOTE [broken entries]): whatever
    ``read`` raises becomes a :class:`BrokenEntryError` naming ``path`` and the
    problem, returned rather than raised so that one file cannot stop a listing.
    """
    try:
        return read()
    except BrokenEntryError as err:
        return err
    except Exception as err:  # noqa: BLE001 - whatever fails here is the file's doing
        return BrokenEntryError(str(path), _reason(err))


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
    if isinstance(err, (RecursionError, MemoryError)):
        # json nested too deep, or a parser stack overflow on a too-deep expression
        detail = f"{type(err).__name__}: {text}" if text else type(err).__name__
        return f"it is nested too deeply to read ({detail})"
    if isinstance(err, (TypeError, ValueError)) and text:
        return text  # a field of the wrong type or value: the message names it
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


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
