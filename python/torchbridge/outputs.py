"""Flattening a model's outputs to a tuple of tensors, and rebuilding them.

A model may return a tensor, a tuple, a list, a dict (``OrderedDict`` and
``ModelOutput``-like mappings included), a dataclass, or any nesting of these.
The bridge hands the tensors over as a flat tuple, in depth-first order, and an
:class:`OutputStructure` that names each of them and rebuilds the original
value.

NOTE [named outputs]
A mapping or a dataclass (transformers' ``ModelOutput`` is both) is a *named*
structure. Only fields that hold at least one tensor are kept: a ``None``
field (``loss`` when no labels were given, ``hidden_states`` when they were not
asked for) is not an output, so a Julia ``NamedTuple`` built from
:attr:`OutputStructure.names` never has a ``nothing`` field. Inside tuples and
lists, positions are kept: plain constants (``None``, numbers, strings) are
kept as they are. Any other object (a transformers ``Cache`` holding key/value
tensors) is not an output of the bridge: it is dropped from named structures
and rebuilt as ``None`` in sequences, so no structure keeps its tensors alive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["OutputStructure", "flatten_outputs"]

_TENSOR = ("tensor",)
_PLAIN = (type(None), bool, int, float, complex, str, bytes)


@dataclass(frozen=True)
class OutputStructure:
    """OutputStructure: how a model's flat outputs nest, and what each is called.

    Attributes:
        kind: ``"tensor"``, ``"tuple"``, ``"list"`` or ``"dict"`` — the outermost
            type. ``"dict"`` is every named structure: a mapping, a dataclass, a
            transformers ``ModelOutput`` (NOTE [named outputs]).
        keys: for ``"dict"``, the top-level names that hold tensors, in order;
            otherwise empty.
        num_tensors: how many tensors the flat tuple holds.
        paths: one path per flat tensor: the keys and positions leading to it,
            e.g. ``("logits",)``, ``("hidden_states", 2)``; ``()`` for a bare tensor.
        names: one name per flat tensor, its path joined by ``"."``
            (``"logits"``, ``"hidden_states.2"``, ``"0"`` for a tuple's first item).
        type_name: the outermost type's qualified name (``"transformers.modeling_outputs.
            SequenceClassifierOutput"``, ``"builtins.dict"``, ``"torch.Tensor"``).
    """

    kind: str
    keys: tuple[str, ...]
    num_tensors: int
    _tree: tuple
    paths: tuple[tuple[str | int, ...], ...] = ()
    type_name: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(".".join(str(p) for p in path) for path in self.paths)

    @property
    def named(self) -> bool:
        """True when the outermost structure is named (``kind == "dict"``)."""
        return self.kind == "dict"

    def index(self, name: str | int) -> int:
        """index(name) -> int: the flat position of the output called ``name``.

        ``name`` is one of :attr:`names`, or an int position. Raises ``KeyError``
        naming the outputs there are.
        """
        if isinstance(name, int) and not isinstance(name, bool):
            if 0 <= name < self.num_tensors:
                return name
        else:
            try:
                return self.names.index(str(name))
            except ValueError:
                pass
        known = list(self.names) or list(range(self.num_tensors))
        raise KeyError(f"no output {name!r}; the outputs are {known}")

    def rebuild(self, flat: Sequence[torch.Tensor]) -> Any:
        """rebuild(flat) -> the value the model returned, with ``flat``'s tensors in it."""
        if len(flat) != self.num_tensors:
            raise ValueError(
                f"OutputStructure.rebuild: expected {self.num_tensors} tensors, got {len(flat)}"
            )
        it = iter(flat)
        return _rebuild(self._tree, it)

    def to_dict(self, flat: Sequence[Any]) -> dict[str, Any]:
        """to_dict(flat) -> dict: each flat item by its name (:attr:`names`)."""
        if len(flat) != self.num_tensors:
            raise ValueError(
                f"OutputStructure.to_dict: expected {self.num_tensors} items, got {len(flat)}"
            )
        return dict(zip(self.names, flat))

    def __repr__(self) -> str:
        keys = f", keys={list(self.keys)}" if self.keys else ""
        return f"OutputStructure(kind={self.kind!r}, num_tensors={self.num_tensors}{keys})"


def flatten_outputs(value: Any) -> tuple[list[torch.Tensor], OutputStructure]:
    """flatten_outputs(value) -> (tensors, structure)."""
    if isinstance(value, torch.Tensor):  # the common case, without the walk
        return [value], _SINGLE_TENSOR
    flat: list[torch.Tensor] = []
    paths: list[tuple[str | int, ...]] = []
    tree = _flatten(value, flat, paths, ())
    if tree[0] == "drop":
        tree = ("const", None)
    kind = {"tensor": "tensor", "tuple": "tuple", "list": "list", "dict": "dict"}.get(tree[0])
    if tree[0] in ("namedtuple", "dataclass"):
        kind = "dict" if tree[0] == "dataclass" else "tuple"
    kind = kind or "tuple"
    keys = tuple(str(k) for k, _ in tree[1]) if tree[0] in ("dict", "dataclass") else ()
    cls = type(value)
    return flat, OutputStructure(
        kind=kind,
        keys=keys,
        num_tensors=len(flat),
        _tree=tree,
        paths=tuple(paths),
        type_name=f"{cls.__module__}.{cls.__qualname__}",
    )


_SINGLE_TENSOR = OutputStructure(
    kind="tensor", keys=(), num_tensors=1, _tree=_TENSOR, paths=((),), type_name="torch.Tensor"
)


def _has_tensor(tree: tuple) -> bool:
    kind = tree[0]
    if kind == "tensor":
        return True
    if kind in ("dict", "dataclass"):
        return any(_has_tensor(sub) for _, sub in tree[1])
    if kind in ("tuple", "list", "namedtuple"):
        return any(_has_tensor(sub) for sub in tree[1])
    return False


def _flatten(value: Any, flat: list, paths: list, path: tuple) -> tuple:
    if isinstance(value, torch.Tensor):
        flat.append(value)
        paths.append(path)
        return _TENSOR
    named = None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, Mapping):  # ModelOutput: its items() already skip None
            named = list(value.items())
        else:
            named = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
        kind = "dataclass"
    elif isinstance(value, Mapping):
        named = list(value.items())
        kind = "dict"
    if named is not None:
        # NOTE [named outputs]: only fields holding tensors are outputs.
        items = []
        for k, v in named:
            if isinstance(v, torch.Tensor) or not isinstance(v, _PLAIN):
                sub = _flatten(v, flat, paths, (*path, k))
                if _has_tensor(sub):
                    items.append((k, sub))
        return (kind, tuple(items), type(value))
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        subs = tuple(_flatten(v, flat, paths, (*path, i)) for i, v in enumerate(value))
        return ("namedtuple", subs, type(value))
    if isinstance(value, (tuple, list)):
        kind = "tuple" if isinstance(value, tuple) else "list"
        subs = tuple(_flatten(v, flat, paths, (*path, i)) for i, v in enumerate(value))
        return (kind, subs)
    if isinstance(value, _PLAIN):
        return ("const", value)
    return ("drop",)  # NOTE [named outputs]: never keep an opaque object's tensors alive


def _rebuild(tree: tuple, it) -> Any:
    kind = tree[0]
    if kind == "tensor":
        return next(it)
    if kind == "dataclass":
        fields = {k: _rebuild(sub, it) for k, sub in tree[1]}
        try:
            return tree[2](**fields)
        except TypeError:  # a dataclass with required fields the outputs do not hold
            return fields
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
    if kind == "drop":
        return None
    return tree[1]
