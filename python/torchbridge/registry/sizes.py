"""How big a model is, without loading it: its values and their bytes per dtype.

``torchbridge info`` shows these. They are read, in this order:

* from the model's safetensors weights on this machine (every shard a
  ``*.safetensors.index.json`` names): the headers alone, never the tensors.
  The count is every value the file stores (parameters and persistent buffers
  such as BatchNorm statistics; a tied weight is stored once), in the dtype it
  is stored in. A local LoRA adapter's file holds the adapter alone;
* otherwise from the architecture, built on the ``meta`` device (no weights,
  no memory for values): its parameters (tied ones once) and persistent
  buffers, in the dtype it is built in. An architecture that only its
  torch.hub repository's code can build has no size here: information
  queries import no repository (NOTE [trust]).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .entry import ModelEntry
from .trust import information_only

__all__ = ["ModelSize", "model_size"]

log = logging.getLogger("torchbridge.registry")

# safetensors' dtype codes -> torch's names
_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}


@dataclass(frozen=True)
class ModelSize:
    """A model's size.

    Attributes:
        parameters: the number of values (see the module's docstring for which).
        bytes: bytes per dtype name (``{"bfloat16": 2_471_000_000}``).
        counted_from: ``"weights file"`` or ``"architecture"``.
        files: the weight files read, when ``counted_from`` is the file.
    """

    parameters: int
    bytes: dict[str, int]
    counted_from: str
    files: tuple[str, ...] = field(default=())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "bytes": dict(self.bytes),
            "total_bytes": self.total_bytes,
            "counted_from": self.counted_from,
            "files": list(self.files),
        }


def _weight_files(entry: ModelEntry) -> list[Path]:
    """The safetensors files holding the entry's weights on this machine, or none."""
    path = entry.metadata.get("weights_path") or (entry.weights.path if entry.weights else None)
    file = Path(path) if path else None
    if file is None or not file.is_file():
        return []
    if file.name.endswith(".safetensors.index.json"):
        from .weights import shard_files

        return shard_files(file)
    return [file] if file.suffix == ".safetensors" else []


def _from_files(files: list[Path]) -> ModelSize:
    from safetensors import safe_open

    count = 0
    sizes: dict[str, int] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                tensor = f.get_slice(key)
                n = 1
                for d in tensor.get_shape():
                    n *= int(d)
                code = tensor.get_dtype()
                name = _SAFETENSORS_DTYPES.get(code, code.lower())
                count += n
                sizes[name] = sizes.get(name, 0) + n * _itemsize(name)
    return ModelSize(count, sizes, "weights file", tuple(str(f) for f in files))


def _itemsize(name: str) -> int:
    import torch

    dtype = getattr(torch, name, None)
    return dtype.itemsize if isinstance(dtype, torch.dtype) else 1


def _from_architecture(model: Any) -> ModelSize:
    saved = set(model.state_dict())
    tensors = [p for _, p in model.named_parameters()]
    tensors += [b for name, b in model.named_buffers() if name in saved]
    sizes: dict[str, int] = {}
    for t in tensors:
        name = str(t.dtype).removeprefix("torch.")
        sizes[name] = sizes.get(name, 0) + t.numel() * t.element_size()
    return ModelSize(sum(t.numel() for t in tensors), sizes, "architecture")


def model_size(model_id: str, *, registry: Any = None) -> ModelSize | None:
    """model_size(model_id, *, registry=None) -> ModelSize | None

    The size of a model from its weight files' headers or, without them, from
    its architecture built on the ``meta`` device; ``None`` when neither can
    be read here (the reason is logged at debug level).
    """
    from .core import get_registry

    registry = registry or get_registry()
    entry = registry.model_info(model_id)
    try:
        files = _weight_files(entry)
        if files:
            return _from_files(files)
        if entry.metadata.get("onnx_path"):
            return None
        source = registry.source(entry.source)
        with information_only():  # NOTE [trust]: sizing a model imports no repository
            return _from_architecture(source._untrained_on_meta(entry))
    except Exception as exc:  # noqa: BLE001 - info must not fail for want of a size
        log.debug("%s: no size: %s: %s", model_id, type(exc).__name__, exc)
        return None
