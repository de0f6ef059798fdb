"""``ModelSource``: what a source of models implements.

A source lists its models as :class:`ModelEntry` objects and builds a
``torch.nn.Module`` for one of them. The registry owns ids (``source/name``),
filtering, search and error messages; a source only speaks of its own names.

A source loads models in one of two ways: it implements :meth:`ModelSource.load`
itself, or it implements :meth:`~ModelSource.build` (an untrained model with a
head of a given size) and :meth:`~ModelSource.build_pretrained` (a model holding
its weights), and the default ``load`` applies NOTE [head rule]
(:mod:`torchbridge.registry.heads`) the same way for every source. The built-in
sources do the latter. :class:`TableSource` adds the entry table that timm and
torchvision share: built once from the library, kept current for the caches.
"""

from __future__ import annotations

import abc
import logging
import threading
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import BrokenEntryError
from ..entry import ModelEntry
from ..heads import classifier_names, held_classes, settle_head
from ..weights import build_for_loading, checkpoint_sha256, load_into_model
from .presence import CachePresence, Hint

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ModelSource", "TableSource"]

log = logging.getLogger("torchbridge.registry")

# The tasks whose models can have a feature-map variant (NOTE [feature variants]).
_FEATURE_TASKS = frozenset({"image-classification", "feature-extraction"})


class ModelSource(abc.ABC):
    """Base class of every model source (built in, or added by a package).

    Subclasses set ``name`` (the id prefix, without ``/``) and implement
    :meth:`entries`, and either :meth:`load` or :meth:`build` and
    :meth:`build_pretrained`. A package adds its source through the entry point
    group ``torchbridge.sources`` (the entry point names a ``ModelSource``
    subclass, an instance, or a function returning one), or at run time with
    ``torchbridge.register_source(source)``.
    """

    #: The id prefix: entries of this source have ids ``f"{name}/{entry.name}"``.
    name: str = ""
    #: Install hint shown when :meth:`available` is false.
    requirement: str = ""
    #: The registry the source was added to (set by the registry); a source whose
    #: models are built from other registry models (``local``) loads them through it.
    registry: Any = None
    #: Whether a model of this source *is* its saved weights (``local``): they are
    #: always loaded, and dropping their head is a warning, as for ``weights=FILE``.
    saved_weights: bool = False
    #: Whether :meth:`load` takes ``dtype=`` (a floating-point ``torch.dtype``) and
    #: builds and loads the model in it; otherwise the registry converts the model
    #: it returns (NOTE [precision] in :mod:`torchbridge.precision`).
    loads_dtype: bool = False

    def available(self) -> bool:
        """available() -> bool: whether the libraries this source needs import."""
        return True

    @abc.abstractmethod
    def entries(self) -> Iterable[ModelEntry | BrokenEntryError]:
        """entries() -> Iterable[ModelEntry | BrokenEntryError]: every model of the source.

        Called on every ``list_models``: cache what is expensive to build.
        Listing runs no code from the models' repositories. A file that cannot
        be read as an entry is given as the :class:`BrokenEntryError` that
        :func:`~torchbridge.registry.entry.read_guarded` made of it, in its
        place; the registry skips it with one warning (NOTE [broken entries]).
        """

    def get(self, name: str) -> ModelEntry | None:
        """get(name) -> ModelEntry | None: the entry with this name, or None.

        The default scans :meth:`entries`; sources with many models override it.

        Raises:
            BrokenEntryError: the file that describes ``name`` is malformed.
        """
        for entry in self.entries():
            if isinstance(entry, ModelEntry) and entry.name == name:
                return entry
        return None

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
        ``num_classes`` follows NOTE [head rule]. The default does all of this
        with :meth:`build` and :meth:`build_pretrained`.
        """
        if not (pretrained or weights is not None or self.saved_weights):
            return self.build(entry, num_classes=num_classes, **kwargs)
        model = self.build_pretrained(entry, weights=weights, trust_pickle=trust_pickle, **kwargs)
        if num_classes is None:
            return model
        return settle_head(
            model,
            num_classes,
            names=self.classifier(entry),
            model_id=entry.id,
            yours=weights is not None or self.saved_weights,
        )

    def build(self, entry: ModelEntry, *, num_classes: int | None, **kwargs: Any) -> Any:
        """build(entry, *, num_classes, **kwargs) -> nn.Module: the untrained model.

        Its head has ``num_classes`` outputs (``None``: the architecture's own;
        0: no classifier).
        """
        raise NotImplementedError(
            f"{type(self).__name__} implements neither load() nor build() and build_pretrained()"
        )

    def build_pretrained(
        self, entry: ModelEntry, *, weights: Path | None, trust_pickle: bool, **kwargs: Any
    ) -> Any:
        """build_pretrained(entry, *, weights, trust_pickle, **kwargs) -> nn.Module

        The model holding every tensor of ``weights`` (or of the published
        weights, when ``weights`` is ``None``) with the head size they hold;
        :meth:`build_holding` does it for a state dict.
        """
        raise NotImplementedError(
            f"{type(self).__name__} implements neither load() nor build() and build_pretrained()"
        )

    def build_holding(
        self, entry: ModelEntry, state: Mapping[str, Any], *, source: str, **kwargs: Any
    ) -> Any:
        """build_holding(entry, state, *, source, **kwargs) -> nn.Module

        :meth:`build` the model with the head size ``state`` holds (on the
        ``meta`` device where that is safe), and load every tensor of it
        strictly and in place (:func:`~torchbridge.registry.weights.load_into_model`,
        NOTE [loading in place]; ``source`` names the file in errors).
        """
        held = held_classes(state, self.classifier(entry))
        model = build_for_loading(lambda: self.build(entry, num_classes=held, **kwargs))
        load_into_model(model, state, source=source)
        return model

    def weights_identity(self, entry: ModelEntry, *, weights: Path | None) -> dict[str, str]:
        """weights_identity(entry, *, weights) -> dict[str, str]

        What identifies the weights ``load(entry, pretrained=True, weights=weights)``
        reads here, so that an adapter trained on them is restored onto the same
        ones only (NOTE [adapter files]): ``{"sha256": ...}`` of a ``weights``
        file (of every shard, for a sharded checkpoint's index). Empty when the
        source cannot tell, as for published weights named by their tag (the
        default without ``weights``).

        Raises:
            WeightsNotFoundError: ``weights`` is not a file.
            CorruptWeightsError: ``weights`` is an index that names missing shards.
        """
        if weights is None:
            return {}
        if not Path(weights).is_file():
            from ...errors import WeightsNotFoundError

            raise WeightsNotFoundError(f"{entry.id}: the weight file {weights} is not there")
        return {"sha256": checkpoint_sha256(weights)}

    def classifier(self, entry: ModelEntry) -> tuple[str, ...]:
        """classifier(entry) -> tuple[str, ...]: the module names of the entry's classifier.

        The default builds the untrained model once (on the ``meta`` device
        where it can) and asks :func:`~torchbridge.registry.heads.classifier_names`;
        the answer is kept until :meth:`refresh`.
        """
        cache: dict[str, tuple[str, ...]] = vars(self).setdefault("_classifiers", {})
        if entry.id not in cache:
            cache[entry.id] = classifier_names(self._untrained_on_meta(entry))
        return cache[entry.id]

    def feature_channels(self, entry: ModelEntry) -> int | None:
        """feature_channels(entry) -> int | None: channels of the entry's feature map.

        The ``C`` of ``load_model(id, features=True)``'s output (NOTE [feature
        variants] in :mod:`torchbridge.registry.features`), from the untrained
        model built on the ``meta`` device where it can. ``None`` when the
        entry has no feature variant, or when its model cannot be built and
        sized here without its weights (the reason is logged at debug level);
        ``load_model(id, features=True)`` then says why. Kept until :meth:`refresh`.
        """
        from ..features import feature_extractor, feature_map_channels

        if entry.task not in _FEATURE_TASKS:
            return None  # detectors, segmenters ...: their heads are not one classifier
        cache: dict[str, int | None] = vars(self).setdefault("_feature_channels", {})
        if entry.id not in cache:
            try:
                features = feature_extractor(self._untrained_on_meta(entry), model_id=entry.id)
                cache[entry.id] = feature_map_channels(features, entry.input_size)
            except Exception as exc:  # noqa: BLE001 - info must not fail for want of it
                log.debug("%s: no feature channels: %s", entry.id, exc)
                cache[entry.id] = None
        return cache[entry.id]

    def _untrained_on_meta(self, entry: ModelEntry) -> Any:
        # The untrained model with its own head, built on the meta device where
        # the builder allows it: its structure without allocating its weights.
        import torch

        def build() -> Any:
            return self.load(
                entry, pretrained=False, weights=None, num_classes=None, trust_pickle=False
            )

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with torch.device("meta"):
                    return build()
            except Exception:  # some builders need real tensors (e.g. .item() at init)
                return build()

    def refresh(self) -> None:
        """refresh() -> None: forget cached entries (new files, new repos)."""
        vars(self).pop("_classifiers", None)
        vars(self).pop("_feature_channels", None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class TableSource(ModelSource):
    """A source whose entries are built once from its library, by name, and kept current
    for the cache folders that may hold their weights (see :class:`.presence.CachePresence`).

    Subclasses implement :meth:`build_table`, :meth:`cache_folders`, :meth:`hints`
    and :meth:`finish`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._static: Mapping[str, Any] | None = None
        self._presence: CachePresence[Any] = CachePresence(self.hints, self.finish)

    @abc.abstractmethod
    def build_table(self) -> Mapping[str, Any]:
        """build_table() -> Mapping[str, item]: what never changes about each entry, by name."""

    @abc.abstractmethod
    def cache_folders(self) -> tuple[Path, ...]:
        """cache_folders() -> tuple[Path, ...]: the folders whose listings say what is cached."""

    @abc.abstractmethod
    def hints(self, item: Any) -> Iterable[Hint]:
        """hints(item) -> Iterable[(folder index, name)]: what hints the item's weights are here."""

    @abc.abstractmethod
    def finish(self, item: Any, hinted: bool) -> ModelEntry:
        """finish(item, hinted) -> ModelEntry: the entry, with its cache presence."""

    def static(self) -> Mapping[str, Any]:
        """static() -> Mapping[str, item]: the table, built on first use."""
        with self._lock:
            if self._static is None:
                self._static = self.build_table()
            return self._static

    def table(self) -> Mapping[str, ModelEntry]:
        """table() -> Mapping[str, ModelEntry]: every entry by name, current for the caches."""
        if not self.available():
            return {}
        return self._presence.entries(self.static(), self.cache_folders())

    def entries(self) -> list[ModelEntry]:
        return list(self.table().values())

    def build_item(self, name: str) -> Any:
        """build_item(name) -> item, None, or NotImplemented

        One entry's item, without building the table: loading one model by id
        never lists a whole source. ``None`` when ``name`` is not in the
        source; ``NotImplemented`` (the default) when the source can only
        answer from its table.
        """
        return NotImplemented

    def get(self, name: str) -> ModelEntry | None:
        if not self.available():
            return None
        with self._lock:
            built = self._static is not None
        if not built:
            item = self.build_item(name)
            if item is not NotImplemented:
                return None if item is None else self._finish_one(item)
        return self.table().get(name)

    def _finish_one(self, item: Any) -> ModelEntry:
        """The entry of one item, its cache presence read from the folders it hints at."""
        folders = self.cache_folders()
        hinted = any(
            index < len(folders) and (folders[index] / found).exists()
            for index, found in self.hints(item)
        )
        return self.finish(item, hinted)

    def refresh(self) -> None:
        super().refresh()
        with self._lock:
            self._static = None
