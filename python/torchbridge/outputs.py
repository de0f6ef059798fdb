"""Flattening a model's outputs to a tuple of tensors, and rebuilding them.

A model may return a tensor, a tuple, a list, a dict (``OrderedDict`` and
``ModelOutput``-like mappings included) or any nesting of these. The bridge
hands the tensors over as a flat tuple, in depth-first order, and an
:class:`OutputStructure` that rebuilds the original value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["OutputStructure", "flatten_outputs"]

_TENSOR = ("tensor",)


@dataclass(frozen=True)
class OutputStructure:
    """OutputStructure: how a model's flat outputs nest.

    Attributes:
        kind: ``"tensor"``, ``"tuple"``, ``"list"`` or ``"dict"`` — the outermost type.
        keys: for ``"dict"``, the top-level keys in order; otherwise empty.
        num_tensors: how many tensors the flat tuple holds.
    """

    kind: str
    keys: tuple[str, ...]
    num_tensors: int
    _tree: tuple

    def rebuild(self, flat: Sequence[torch.Tensor]) -> Any:
        """rebuild(flat) -> the value the model returned, with ``flat``'s tensors in it."""
        if len(flat) != self.num_tensors:
            raise ValueError(
                f"OutputStructure.rebuild: expected {self.num_tensors} tensors, got {len(flat)}"
            )
        it = iter(flat)
        return _rebuild(self._tree, it)

    def __repr__(self) -> str:
        keys = f", keys={list(self.keys)}" if self.keys else ""
        return f"OutputStructure(kind={self.kind!r}, num_tensors={self.num_tensors}{keys})"


def flatten_outputs(value: Any) -> tuple[list[torch.Tensor], OutputStructure]:
    """flatten_outputs(value) -> (tensors, structure)."""
    if isinstance(value, torch.Tensor):  # the common case, without the walk
        return [value], _SINGLE_TENSOR
    flat: list[torch.Tensor] = []
    tree = _flatten(value, flat)
    kind = tree[0] if tree[0] in ("tensor", "tuple", "list", "dict") else "tuple"
    keys = tuple(str(k) for k, _ in tree[1]) if tree[0] == "dict" else ()
    return flat, OutputStructure(kind=kind, keys=keys, num_tensors=len(flat), _tree=tree)


_SINGLE_TENSOR = OutputStructure(kind="tensor", keys=(), num_tensors=1, _tree=_TENSOR)


def _flatten(value: Any, flat: list[torch.Tensor]) -> tuple:
    if isinstance(value, torch.Tensor):
        flat.append(value)
        return _TENSOR
    if isinstance(value, Mapping):
        return ("dict", tuple((k, _flatten(v, flat)) for k, v in value.items()), type(value))
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return ("namedtuple", tuple(_flatten(v, flat) for v in value), type(value))
    if isinstance(value, (tuple, list)):
        kind = "tuple" if isinstance(value, tuple) else "list"
        return (kind, tuple(_flatten(v, flat) for v in value))
    return ("const", value)


def _rebuild(tree: tuple, it) -> Any:
    kind = tree[0]
    if kind == "tensor":
        return next(it)
    if kind == "dict":
        items = [(k, _rebuild(sub, it)) for k, sub in tree[1]]
        try:
            return tree[2](items)
        except TypeError:  # a mapping type that cannot be built from pairs
            return dict(items)
    if kind == "namedtuple":
        return tree[2](*(_rebuild(sub, it) for sub in tree[1]))
    if kind in ("tuple", "list"):
        items = [_rebuild(sub, it) for sub in tree[1]]
        return tuple(items) if kind == "tuple" else items
    return tree[1]
