"""``ModelSource``: what a source of models implements.

A source lists its models as :class:`ModelEntry` objects and builds a
``torch.nn.Module`` for one of them. The registry owns ids (``source/name``),
filtering, search and error messages; a source only speaks of its own names.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..entry import ModelEntry

__all__ = ["ModelSource"]


class ModelSource(abc.ABC):
    """Base class of every model source (built in, or added by a package).

    Subclasses set ``name`` (the id prefix, without ``/``) and implement
    :meth:`entries` and :meth:`load`. A package adds its source through the
    entry point group ``torchbridge.sources`` (the entry point names a
    ``ModelSource`` subclass, an instance, or a function returning one), or at
    run time with ``torchbridge.register_source(source)``.
    """

    #: The id prefix: entries of this source have ids ``f"{name}/{entry.name}"``.
    name: str = ""
    #: Install hint shown when :meth:`available` is false.
    requirement: str = ""

    def available(self) -> bool:
        """available() -> bool: whether the libraries this source needs import."""
        return True

    @abc.abstractmethod
    def entries(self) -> Iterable[ModelEntry]:
        """entries() -> Iterable[ModelEntry]: every model of the source.

        Called on every ``list_models``: cache what is expensive to build.
        """

    def get(self, name: str) -> ModelEntry | None:
        """get(name) -> ModelEntry | None: the entry with this name, or None.

        The default scans :meth:`entries`; sources with many models override it.
        """
        for entry in self.entries():
            if entry.name == name:
                return entry
        return None

    @abc.abstractmethod
    def load(
        self,
        entry: ModelEntry,
        *,
        pretrained: bool,
        weights: Path | None,
        num_classes: int | None,
        trust_pickle: bool,
        **kwargs: Any,
    ) -> torch.nn.Module:
        """load(entry, *, pretrained, weights, num_classes, trust_pickle, **kwargs) -> nn.Module

        Build the model of ``entry``. With ``pretrained`` (always true when
        ``weights`` is a file), load the weights following the registry's
        offline-first order and safe loading (:mod:`torchbridge.registry.weights`).
        With ``num_classes``, give the model a new head of that size and keep
        the rest of the pretrained weights.
        """

    def refresh(self) -> None:
        """refresh() -> None: forget cached entries (new files, new repos)."""
        return None  # sources without a cache have nothing to forget

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
