"""The registry: one set of sources, and the public functions over them."""

from __future__ import annotations

import difflib
import fnmatch
import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    BrokenEntryError,
    DuplicateSourceError,
    InvalidModelIdError,
    RegistryArgumentError,
    RegistryError,
    UnknownModelError,
    UnknownSourceError,
)
from .entry import ModelEntry
from .sources import ModelSource, as_source, builtin_sources, entry_point_sources
from .trust import information_only, trusting_repos

log = logging.getLogger("torchbridge.registry")

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "MAX_ID_LENGTH",
    "ModelRegistry",
    "check_model_id",
    "feature_channels",
    "get_registry",
    "list_models",
    "load_model",
    "model_info",
    "register_local_model",
    "register_source",
    "search_models",
]


#: The longest id the registry looks up (NOTE [ids are names]).
MAX_ID_LENGTH = 512

# NOTE [ids are names]
#     An id is ``source/name`` and a name is a name, never a path: before any
#     source sees it, an id holding a NUL or control character or a backslash,
#     an empty part (``local//abs/path``, a trailing ``/``), a ``.`` or ``..``
#     part, or more than MAX_ID_LENGTH characters is an InvalidModelIdError. A
#     source that maps names to files checks its own names too (``local``:
#     one file name of letters, digits, ``.``, ``_``, ``-``; see
#     ``check_local_name``), so no id reaches a file outside its folders.


def check_model_id(model_id: str) -> None:
    """check_model_id(model_id) -> None: raise InvalidModelIdError unless ``model_id`` is a
    well-formed ``source/name`` (NOTE [ids are names]). Reads nothing on disk."""
    shown = model_id if len(model_id) <= 80 else model_id[:60] + f"... ({len(model_id)} characters)"
    reason = None
    if len(model_id) > MAX_ID_LENGTH:
        reason = f"it is longer than {MAX_ID_LENGTH} characters"
    elif any(ord(c) < 32 or ord(c) == 127 for c in model_id):
        reason = "it holds a NUL or another control character"
    elif "\\" in model_id:
        reason = "it holds a backslash"
    elif "/" in model_id:
        parts = model_id.split("/")
        if any(p == "" for p in parts):
            reason = "it holds an empty part (a leading, doubled or trailing '/')"
        elif any(p in (".", "..") for p in parts):
            reason = "it holds a '.' or '..' part"
    if reason is not None:
        raise InvalidModelIdError(
            f"{shown!r} is not a model id: {reason}. An id is 'source/name', and a name is "
            "a name, not a path (e.g. 'timm/resnet18', 'local/my-model').",
            model_id,
        )


class ModelRegistry:
    """Sources by name, and the queries over all of them.

    The process-wide registry is :func:`get_registry`; the module-level
    functions (``list_models`` ...) use it. Built-in sources and entry-point
    sources are added on first use, so importing torchbridge stays cheap.
    """

    def __init__(self, sources: Iterable[ModelSource] | None = None, *, discover: bool = True):
        self._lock = threading.RLock()
        self._sources: dict[str, ModelSource] = {}
        self._pending = list(sources) if sources is not None else None
        self._discover = discover
        self._ready = False

    # -- sources -------------------------------------------------------------

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            initial = self._pending if self._pending is not None else builtin_sources()
            for source in initial:
                if source.name not in self._sources:
                    self._adopt(source)
            if self._discover:
                for source in entry_point_sources():
                    if source.name in self._sources:
                        import warnings

                        warnings.warn(
                            f"model source {source.name!r} from an entry point is ignored: "
                            "a source of that name is already registered",
                            stacklevel=3,
                        )
                        continue
                    self._adopt(source)
            self._ready = True

    def _adopt(self, source: ModelSource) -> None:
        source.registry = self  # a source loads the models it builds on through its registry
        self._sources[source.name] = source

    def register_source(self, source: Any, *, replace: bool = False) -> ModelSource:
        """register_source(source, *, replace=False) -> ModelSource

        Add a source (a :class:`ModelSource` instance, subclass or factory).
        A name already taken raises :class:`DuplicateSourceError` unless
        ``replace`` is true.
        """
        source = as_source(source)
        name = getattr(source, "name", "")
        if not isinstance(name, str) or not name or "/" in name:
            raise RegistryArgumentError(
                f"a model source needs a non-empty name without '/', got {name!r}"
            )
        self._ensure_ready()
        with self._lock:
            if name in self._sources and not replace:
                raise DuplicateSourceError(
                    f"a model source named {name!r} is already registered "
                    f"({self._sources[name]!r}); pass replace=True to replace it"
                )
            self._adopt(source)
        return source

    def source(self, name: str) -> ModelSource:
        """source(name) -> ModelSource, or UnknownSourceError naming the known ones."""
        self._ensure_ready()
        try:
            return self._sources[name]
        except KeyError:
            known = ", ".join(sorted(self._sources))
            close = difflib.get_close_matches(name, list(self._sources), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownSourceError(
                f"unknown model source {name!r}; the sources are: {known}.{hint}"
            ) from None

    def sources(self) -> list[ModelSource]:
        """sources() -> list[ModelSource]: every registered source, available or not."""
        self._ensure_ready()
        with self._lock:
            return list(self._sources.values())

    def refresh(self) -> None:
        """refresh() -> None: make every source forget what it cached."""
        for source in self.sources():
            source.refresh()
        with self._lock:
            vars(self).pop("_warned", None)

    # -- queries -------------------------------------------------------------

    def entries(self, source: str | None = None) -> list[ModelEntry]:
        """entries(source=None) -> list[ModelEntry]: every entry (of one source), in source
        order."""
        chosen = [self.source(source)] if source is not None else self.sources()
        out: list[ModelEntry] = []
        for src in chosen:
            if src.available():
                out.extend(self._listed(src))
        return out

    def _listed(self, src: ModelSource) -> list[ModelEntry]:
        """NOTE [broken entries]: a source's entries, each broken one skipped with one warning
        (and a source whose listing fails as a whole, skipped with one warning)."""
        try:
            items = list(src.entries())
        except Exception as err:  # noqa: BLE001 - one source must not hide the others
            self._warn_once(
                f"model source {src.name!r} failed to list its models "
                f"({type(err).__name__}: {err}); they are not listed"
            )
            return []
        good = []
        for item in items:
            if isinstance(item, BrokenEntryError):
                self._warn_once(f"{item} It is not listed (torchbridge doctor lists such files).")
            else:
                good.append(item)
        return good

    def _warn_once(self, message: str) -> None:
        import warnings

        with self._lock:
            warned = vars(self).setdefault("_warned", set())
            if message in warned:
                return
            warned.add(message)
        warnings.warn(message, stacklevel=4)

    def broken_entries(self) -> list[BrokenEntryError]:
        """broken_entries() -> list[BrokenEntryError]: the description files that every
        available source skips now (NOTE [broken entries]), each naming its file."""
        found: list[BrokenEntryError] = []
        for src in self.sources():
            if not src.available():
                continue
            try:
                found.extend(i for i in src.entries() if isinstance(i, BrokenEntryError))
            except Exception:  # noqa: BLE001, S112 - its failure is warned about when listed
                continue
        return found

    def list_models(
        self,
        pattern: str | None = None,
        *,
        source: str | None = None,
        pretrained: bool | None = None,
        task: str | None = None,
    ) -> list[ModelEntry]:
        """See :func:`list_models`."""
        entries = self.entries(source)
        if pattern:
            # case-insensitive wildcards, matched against the id or the name
            match = re.compile(fnmatch.translate(pattern.lower())).match
            entries = [e for e in entries if match(e.id.lower()) or match(e.name.lower())]
        if pretrained is not None:
            entries = [e for e in entries if e.pretrained == pretrained]
        if task is not None:
            entries = [e for e in entries if e.task == task]
        return entries

    def search_models(self, query: str, *, limit: int = 20) -> list[ModelEntry]:
        """See :func:`search_models`."""
        from .search import rank

        if not isinstance(query, str):
            raise TypeError(f"search_models: query must be a str, got {type(query).__name__}")
        return rank(self.entries(), query, limit=limit)

    def model_info(self, model_id: str) -> ModelEntry:
        """See :func:`model_info`."""
        if not isinstance(model_id, str) or not model_id:
            raise TypeError(
                f"model id must be a non-empty str like 'timm/resnet18', got {model_id!r}"
            )
        if len(model_id) > MAX_ID_LENGTH or not model_id.isprintable():
            check_model_id(model_id)  # before anything, not even suggestions, reads it
        source_name, sep, name = model_id.partition("/")
        if not sep or not name:
            raise self._unknown(model_id, f"{model_id!r} is not a model id: ids are 'source/name'")
        check_model_id(model_id)
        src = self.source(source_name)
        if not src.available():
            raise RegistryError(
                f"{model_id}: the {source_name} source needs "
                f"{src.requirement or 'a library that is not installed'}"
            )
        entry = src.get(name)
        if entry is None:
            # names are case-sensitive; forgive case when it is unambiguous
            folded = [e for e in self._listed(src) if e.name.lower() == name.lower()]
            if len(folded) == 1:
                return folded[0]
            raise self._unknown(model_id, f"no model {model_id!r} in the {source_name} source")
        return entry

    def classifier(
        self, model_id: str, *, trust_repo: bool = False, trust_remote_code: bool = False
    ) -> tuple[str, ...]:
        """classifier(model_id, *, trust_repo=False, trust_remote_code=False) -> tuple[str, ...]

        The module names of a model's classifier head (``("fc",)``, ``("head.fc",)``
        ...); empty when it has none the registry knows. Finding them builds the
        untrained model, so a ``hub/`` model (or a ``local/`` one built from it) needs
        ``trust_repo`` and a Hugging Face repository with its own code needs
        ``trust_remote_code``, as loading does (NOTE [trust]); otherwise
        :class:`~torchbridge.errors.RemoteCodeError`.

        See NOTE [head rule] in :mod:`torchbridge.registry.heads`.
        """
        entry = self.model_info(model_id)
        source = self.source(entry.source)
        with trusting_repos(bool(trust_repo)):
            if trust_remote_code and entry.source == "hf":
                return source.classifier(entry, trust_remote_code=True)
            return source.classifier(entry)

    def feature_channels(self, model_id: str) -> int | None:
        """See :func:`feature_channels`."""
        entry = self.model_info(model_id)
        with information_only():  # NOTE [trust]: sizing a model imports no repository
            return self.source(entry.source).feature_channels(entry)

    def _unknown(self, model_id: str, message: str) -> UnknownModelError:
        suggestions = self.suggest(model_id)
        if suggestions:
            message += ". Did you mean: " + ", ".join(suggestions) + "?"
        else:
            message += ". List models with torchbridge.list_models() or `torchbridge list`."
        return UnknownModelError(message, model_id, tuple(suggestions))

    def suggest(self, model_id: str, n: int = 5) -> list[str]:
        """suggest(model_id, n=5) -> list[str]: the ids closest to a mistyped one."""
        source_name, sep, name = model_id.partition("/")
        if sep and source_name in self._sources:
            pool = self.entries(source_name)
        else:
            pool = self.entries()
            name = model_id if not sep else name
        lowered = name.lower()
        # exact names from other sources first ("resnet18" -> timm/resnet18, torchvision/resnet18)
        exact = [e.id for e in pool if e.name.lower() == lowered]
        names = sorted({e.name for e in pool})
        close = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
        by_name: dict[str, list[str]] = {}
        for e in pool:
            by_name.setdefault(e.name, []).append(e.id)
        ranked = exact + [i for c in close for i in by_name[c]]
        return list(dict.fromkeys(ranked))[:n]

    def load_model(
        self,
        model_id: str,
        *,
        pretrained: bool = False,
        weights: str | os.PathLike[str] | None = None,
        num_classes: int | None = None,
        trust_pickle: bool = False,
        features: bool = False,
        trust_repo: bool = False,
        lora: Any = None,
        dtype: Any = None,
        gradient_checkpointing: bool = False,
        **kwargs: Any,
    ) -> torch.nn.Module:
        """See :func:`load_model`."""
        from ..precision import resolve_dtype

        if "torch_dtype" in kwargs:  # transformers' older name
            if dtype is not None:
                from ..errors import PrecisionError

                raise PrecisionError(
                    f"{model_id}: dtype={dtype!r} and torch_dtype={kwargs['torch_dtype']!r} both "
                    "given; they are one setting: pass dtype alone."
                )
            dtype = kwargs.pop("torch_dtype")
        dtype = resolve_dtype(dtype, what=f"{model_id}: dtype")
        entry = self.model_info(model_id)
        source = self.source(entry.source)
        if entry.source in _NO_REMOTE_CODE and "trust_remote_code" in kwargs:
            _refuse_remote_code_switch(entry, kwargs.pop("trust_remote_code"))
        if lora not in (None, False) and entry.metadata.get("adapter_folder"):
            from ..errors import AdapterError

            raise AdapterError(
                f"{model_id} is a LoRA adapter already; load it without lora= to train it "
                "further, or merge it (torchbridge.merge_adapter) before adding another."
            )
        weights_path = Path(weights).expanduser() if weights is not None else None
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 0):
            raise RegistryArgumentError(
                f"{model_id}: num_classes must be a non-negative int, got {num_classes!r}"
            )
        if features and num_classes is not None:
            raise RegistryArgumentError(
                f"{model_id}: features=True returns the model without its classifier, so "
                f"num_classes={num_classes} has nothing to size; pass one or the other"
            )
        with trusting_repos(bool(trust_repo)):  # NOTE [trust]: for nested builds too
            model = source.load(
                entry,
                pretrained=bool(pretrained or weights_path is not None),
                weights=weights_path,
                num_classes=num_classes,
                trust_pickle=trust_pickle,
                **({"dtype": dtype} if dtype is not None and source.loads_dtype else {}),
                **kwargs,
            )
        from ..adapters import is_adapter_model

        if dtype is not None and not is_adapter_model(model):
            model.to(dtype)  # floating-point tensors only; a no-op where they are already
        if features:
            from .features import feature_extractor

            model = feature_extractor(model, model_id=entry.id)
        if gradient_checkpointing:
            from ..checkpointing import enable_gradient_checkpointing

            enable_gradient_checkpointing(model, model_id=entry.id)
        if lora in (None, False):
            return model
        from ..adapters import BaseModel, attach

        # trust (trust_remote_code) is given at each load, never recorded
        record = {
            "pretrained": bool(pretrained or weights_path is not None),
            "weights": None if weights_path is None else str(weights_path.resolve()),
            "num_classes": num_classes,
            "features": features or None,
            "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
            **{k: v for k, v in kwargs.items() if k != "trust_remote_code"},
        }
        base = BaseModel(
            entry.id,
            {k: v for k, v in record.items() if v is not None},
            # NOTE [adapter files]: which weights these are, checked when the adapter is restored
            self._weights_identity(entry, weights_path) if record["pretrained"] else {},
        )
        head = () if features else self._trained_head(entry, model, kwargs, trust_repo)
        return attach(model, lora, base=base, classifier=head)

    def _weights_identity(self, entry: ModelEntry, weights: Path | None) -> dict[str, str]:
        """What identifies the weights a load of ``entry`` with ``weights`` reads (its
        source's ``weights_identity``)."""
        return self.source(entry.source).weights_identity(entry, weights=weights)

    def _trained_head(
        self, entry: ModelEntry, model: Any, kwargs: dict, trust_repo: bool
    ) -> tuple[str, ...]:
        """The classifier a LoRA adapter trains beside it by default (NOTE [adapters]): the
        layers of the loaded ``model`` that hold its classifier's weights.

        A transformers model's head is read from the model itself, when its task has one
        (no repository code runs again); any other is the one its source names, asked with
        the load's trust (a ``hub/`` source builds the model to name it).
        """
        from .heads import classifier_names
        from .sources.hf_source import LABEL_TASKS
        from .sources.local_source import is_transformers_model

        if is_transformers_model(model):
            task = kwargs.get("task") or entry.task
            names = classifier_names(model) if task in LABEL_TASKS else ()
        else:
            names = self.classifier(entry.id, trust_repo=trust_repo)  # the load's trust
        # a removed classifier (num_classes=0) holds no weights: nothing to train
        return tuple(n for n in names if _holds_parameters(model, n))

    def register_local_model(
        self,
        name: str,
        module_or_state_dict: Any,
        *,
        architecture: str | None = None,
        num_classes: int | None = None,
        description: str | None = None,
        task: str | None = None,
        tags: Iterable[str] = (),
        kwargs: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        directory: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        input_size: tuple[int, ...] | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        tokenizer: Any = None,
        trust_remote_code: bool = False,
    ) -> ModelEntry:
        """See :func:`register_local_model`."""
        from .sources.local_source import check_local_name

        check_local_name(name, what="register_local_model")  # before anything is read or written
        from ..adapters import is_adapter_model

        if is_adapter_model(module_or_state_dict):
            return self._register_adapter(
                name,
                module_or_state_dict,
                architecture=architecture,
                kwargs=kwargs,
                description=description,
                task=task,
                tags=tags,
                metadata=metadata,
                directory=directory,
                overwrite=overwrite,
            )
        if _is_onnx_file(module_or_state_dict):
            return self._register_onnx(
                name,
                module_or_state_dict,
                description=description,
                task=task,
                tags=tags,
                metadata=metadata,
                directory=directory,
                overwrite=overwrite,
                input_size=input_size,
                mean=mean,
                std=std,
            )
        if architecture is None:
            raise TypeError(
                "register_local_model: architecture= is required (a registry id that builds "
                "the module, e.g. 'timm/resnet18'), except for an .onnx file."
            )
        from .paths import local_models_dir
        from .sources.local_source import (
            LocalSource,
            is_transformers_model,
            save_local_hf_model,
            save_local_model,
        )

        local = self.source("local")
        arch_entry = self.model_info(architecture)
        if directory:
            folder = Path(directory).expanduser().resolve()
        else:
            folder = (
                local.save_directory() if isinstance(local, LocalSource) else local_models_dir()
            )
        if is_transformers_model(module_or_state_dict):
            save_local_hf_model(
                name,
                module_or_state_dict,
                architecture=arch_entry,
                num_classes=num_classes,
                directory=folder,
                tokenizer=tokenizer,
                description=description,
                task=task,
                tags=tuple(tags),
                metadata=metadata,
                overwrite=overwrite,
                trust_remote_code=trust_remote_code,
            )
            return self._registered(local, folder, name)
        classifier: tuple[str, ...] = ()
        if arch_entry.source != "local":
            try:
                classifier = self.source(arch_entry.source).classifier(arch_entry)
            except Exception as err:  # a builder that cannot run here (an untrusted hub
                # repository, a missing dependency): the head size is then not checked
                log.debug(
                    "register_local_model(%r): the head size of %s is not checked (%s: %s)",
                    name,
                    arch_entry.id,
                    type(err).__name__,
                    err,
                )
                classifier = ()
        save_local_model(
            name,
            module_or_state_dict,
            architecture=arch_entry,
            num_classes=num_classes,
            directory=folder,
            classifier=classifier,
            description=description,
            task=task,
            tags=tuple(tags),
            kwargs=kwargs,
            metadata=metadata,
            overwrite=overwrite,
            input_size=input_size,
            mean=mean,
            std=std,
        )
        return self._registered(local, folder, name)

    def _register_adapter(
        self,
        name: str,
        model: Any,
        *,
        architecture: str | None,
        kwargs: dict[str, Any] | None,
        directory: Any,
        **details: Any,
    ) -> ModelEntry:
        """NOTE [adapter files]: the adapter alone, beside a reference to its base model."""
        from ..adapters import BaseModel, base_of
        from ..errors import AdapterError
        from .paths import local_models_dir
        from .sources.local_source import LocalSource, save_local_adapter

        base = base_of(model)
        if architecture is not None:
            stored = dict(kwargs) if kwargs else {"pretrained": True}
            if isinstance(stored.get("weights"), (str, os.PathLike)):
                stored["weights"] = str(Path(stored["weights"]).expanduser().resolve())
            base = BaseModel(architecture, stored)
        elif kwargs:
            raise AdapterError(
                "register_local_model: kwargs= describes the base model named by architecture=; "
                "give both, or neither for a model loaded with load_model(id, lora=...)."
            )
        if base is None:
            raise AdapterError(
                "register_local_model: this adapter's base model is not a registry model it "
                "remembers (it was not loaded with load_model(id, lora=...)). Name it: "
                "architecture='hf/org/name' (and kwargs= the arguments that load it, "
                "pretrained=True by default)."
            )
        base_entry = self.model_info(base.id)  # an unknown base: an UnknownModelError now
        if not base.has_weights:
            raise AdapterError(
                f"register_local_model: the adapter's base {base.id} was loaded without weights "
                "(a random initialisation), which an adapter cannot be restored onto. Load the "
                "base with pretrained=True (or weights=...), or save the whole model: "
                "register_local_model(name, torchbridge.merge_adapter(model), architecture=...)."
            )
        if not base.identity:  # a base named here: its weights as they are now
            weights = base.kwargs.get("weights")
            base = BaseModel(
                base.id,
                base.kwargs,
                self._weights_identity(base_entry, None if weights is None else Path(weights)),
            )
        local = self.source("local")
        if directory:
            folder = Path(directory).expanduser().resolve()
        else:
            folder = (
                local.save_directory() if isinstance(local, LocalSource) else local_models_dir()
            )
        save_local_adapter(
            name, model, base=base, directory=folder, **{**details, "tags": tuple(details["tags"])}
        )
        return self._registered(local, folder, name)

    def _register_onnx(self, name: str, file: Any, *, directory: Any, **kwargs: Any):
        """NOTE [onnx files]: copy the file in as ``<name>.onnx`` with its sidecar."""
        from .paths import local_models_dir
        from .sources.local_source import LocalSource, save_local_onnx

        local = self.source("local")
        if directory:
            folder = Path(directory).expanduser().resolve()
        else:
            folder = (
                local.save_directory() if isinstance(local, LocalSource) else local_models_dir()
            )
        save_local_onnx(name, file, directory=folder, **{**kwargs, "tags": tuple(kwargs["tags"])})
        return self._registered(local, folder, name)

    def _registered(self, local: ModelSource, folder: Path, name: str) -> ModelEntry:
        from .sources.local_source import LocalSource

        if isinstance(local, LocalSource) and folder not in local.directories():
            local.add_directory(folder)
        entry = local.get(name)
        if entry is None or Path(entry.metadata.get("sidecar", "")).parent != folder:
            raise RegistryError(
                f"local/{name} was saved in {folder}, but another local model of that name "
                "is found first; pick another name"
            )
        return entry


def _holds_parameters(model: Any, name: str) -> bool:
    try:
        return next(model.get_submodule(name).parameters(), None) is not None
    except AttributeError:
        return False


def _is_onnx_file(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike)) and str(value).lower().endswith(".onnx")


_REGISTRY: ModelRegistry | None = None
_REGISTRY_LOCK = threading.Lock()


def get_registry() -> ModelRegistry:
    """get_registry() -> ModelRegistry: the process-wide registry."""
    global _REGISTRY
    if _REGISTRY is None:
        with _REGISTRY_LOCK:
            if _REGISTRY is None:
                _REGISTRY = ModelRegistry()
    return _REGISTRY


# -- the public functions ----------------------------------------------------


def list_models(
    pattern: str | None = None,
    *,
    source: str | None = None,
    pretrained: bool | None = None,
    task: str | None = None,
) -> list[ModelEntry]:
    """list_models(pattern=None, *, source=None, pretrained=None, task=None) -> list[ModelEntry]

    Every registered model, filtered. ``pattern`` holds shell wildcards
    (``*``, ``?``, ``[...]``), matched without regard to case against the id or
    the name (``"resnet*"``, ``"timm/vit_*"``). ``source`` keeps one source,
    ``pretrained`` keeps models with (True) or without (False) published
    weights, ``task`` one task (``"image-classification"`` ...).

    >>> [e.id for e in list_models("resnet18*", source="timm")][:2]  # doctest: +SKIP
    ['timm/resnet18', 'timm/resnet18.a1_in1k']
    """
    return get_registry().list_models(pattern, source=source, pretrained=pretrained, task=task)


def search_models(query: str, *, limit: int = 20) -> list[ModelEntry]:
    """search_models(query, *, limit=20) -> list[ModelEntry]

    Free-text search ("tiny vision transformer", "efficientnet b0 imagenet"),
    best match first. Synonyms are understood (vit / vision transformer,
    imagenet / in1k ...); names weigh more than descriptions; models with
    published weights win ties.
    """
    return get_registry().search_models(query, limit=limit)


def model_info(model_id: str) -> ModelEntry:
    """model_info(model_id) -> ModelEntry

    The entry of one model, by id (``"timm/resnet18.a1_in1k"``). An unknown id
    raises :class:`~torchbridge.errors.UnknownModelError` whose ``suggestions``
    hold the closest ids; an unknown source,
    :class:`~torchbridge.errors.UnknownSourceError`.
    """
    return get_registry().model_info(model_id)


# Built-in sources whose builders take no trust_remote_code (NOTE [trust]).
_NO_REMOTE_CODE = ("timm", "torchvision", "hub")


def _refuse_remote_code_switch(entry: ModelEntry, value: Any) -> None:
    """``trust_remote_code=False`` asks nothing of a source without repository code; ``True``
    would read as a trust it does not give, so it is refused, naming the switch that does."""
    if not value:
        return
    hint = (
        " Its hubconf.py is trusted with trust_repo=True (NOTE [trust], docs/registry.md)."
        if entry.source == "hub"
        else ""
    )
    raise RegistryArgumentError(
        f"{entry.id}: trust_remote_code=True is a switch of Hugging Face models (hf/ ids, "
        f"and local/ ones saved from them); a {entry.source}/ model runs no Hugging Face "
        f"repository code, so leave it out.{hint}"
    )


def load_model(
    model_id: str,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    features: bool = False,
    trust_repo: bool = False,
    lora: Any = None,
    dtype: Any = None,
    gradient_checkpointing: bool = False,
    **kwargs: Any,
) -> torch.nn.Module:
    """load_model(model_id, *, pretrained=False, weights=None, num_classes=None,
    trust_pickle=False, features=False, trust_repo=False, lora=None, dtype=None,
    gradient_checkpointing=False, **kwargs) -> nn.Module

    Build a model by id. With ``pretrained=True`` the published weights are
    found offline-first: the Hugging Face and torch.hub caches, then a download
    unless ``TORCHBRIDGE_OFFLINE``/``HF_HUB_OFFLINE`` is set. ``weights=PATH``
    loads that file instead (and implies ``pretrained``). Weights keep their own
    head, whose size is read from the file; a different ``num_classes`` replaces
    it with a new one of that size, keeps every other weight, and logs the
    tensors dropped (NOTE [head rule] in :mod:`torchbridge.registry.heads`).
    Without weights, ``num_classes`` is the size of the untrained head.
    Pickled files are loaded with ``weights_only=True``;
    ``trust_pickle=True`` allows full unpickling of a file you trust.
    ``trust_repo=True`` allows importing the ``hubconf.py`` of the torch.hub
    repository a ``hub/`` model (or a ``local/`` model built from one) comes
    from; ``trust_remote_code=True`` (an ``hf/`` model's keyword) allows a Hugging
    Face repository's own code (NOTE [trust] in :mod:`torchbridge.registry.trust`).
    ``features=True`` returns the model without its pooling and classifier, so
    its output is the last feature map, torch ``(N, C, H, W)`` (NOTE [feature
    variants] in :mod:`torchbridge.registry.features`; ``feature_channels(id)``
    is ``C``). Other keyword arguments go to the model's builder (e.g. timm's
    ``drop_rate``).

    Local models (``local/<name>``) always load their saved weights, and are built
    from their architecture by the registry that holds them.

    For large models (docs/transformers.md, "Finetune a large model"):

    - ``dtype`` (``"bfloat16"``, ``"float16"``, ``"float32"`` or a torch dtype;
      ``torch_dtype`` is the same) gives the model's weights that type
      (NOTE [precision] in :mod:`torchbridge.precision`); transformers models
      are built and loaded in it directly. Without it a transformers model has
      the dtype its config records, any other model float32.
    - ``gradient_checkpointing=True`` recomputes activations in the backward
      pass instead of keeping them (:mod:`torchbridge.checkpointing`).
    - ``lora`` (a dict of settings, or ``True`` for the defaults) puts LoRA
      adapters on the model and freezes the rest; the result is a
      ``peft.PeftModel`` whose trainable parameters are the adapter's alone
      (NOTE [adapters] in :mod:`torchbridge.adapters`).

    Weights load in place, never held twice (NOTE [loading in place] in
    :mod:`torchbridge.registry.weights`); a sharded checkpoint's index
    (``model.safetensors.index.json``) may be given as ``weights``.

    Raises:
        UnknownModelError, UnknownSourceError: the id is not known.
        WeightsNotFoundError: pretrained weights are neither given, cached nor downloadable.
        InvalidModelIdError: the id is not a well-formed name (NOTE [ids are names]).
        BrokenEntryError: the model's description file is malformed (it names the file).
        UnsafeCheckpointError: a pickled file would run code (and ``trust_pickle`` is false).
        RemoteCodeError: the model needs its repository's code, not trusted
            (``UntrustedRepoError`` for a torch.hub repository).
        ChecksumError: a file's sha256 differs from the published one.
        CorruptWeightsError: a file is truncated or does not fit the model.
        FeaturesUnavailableError: ``features=True`` for a model without a known
            feature-map variant.
        PrecisionError: ``dtype`` names no floating-point type.
        GradientCheckpointingError: the model has no gradient checkpointing.
        AdapterError: a bad ``lora`` setting, or layers PEFT cannot adapt.
        AdapterBaseChangedError: a saved adapter (``local/<name>``) whose base would
            load other weights than those it was trained on (NOTE [adapter files]).
    """
    return get_registry().load_model(
        model_id,
        pretrained=pretrained,
        weights=weights,
        num_classes=num_classes,
        trust_pickle=trust_pickle,
        features=features,
        trust_repo=trust_repo,
        lora=lora,
        dtype=dtype,
        gradient_checkpointing=gradient_checkpointing,
        **kwargs,
    )


def feature_channels(model_id: str) -> int | None:
    """feature_channels(model_id) -> int | None

    The channels ``C`` of ``load_model(model_id, features=True)``'s output
    feature map (512 for resnet18), computed without weights or data (the model
    built on the ``meta`` device); ``None`` when the model has no feature
    variant or cannot be built and sized without its weights
    (``load_model(model_id, features=True)`` then says why), and for models built
    by a torch.hub repository's code (``hub/`` and the ``local/`` models built
    from them): information queries import no repository (NOTE [trust]). The rows of
    :func:`torchbridge.julia_support.info_row` and ``torchbridge info`` carry it.
    """
    return get_registry().feature_channels(model_id)


def register_source(source: Any, *, replace: bool = False) -> ModelSource:
    """register_source(source, *, replace=False) -> ModelSource

    Add a model source at run time: a :class:`ModelSource` instance, subclass,
    or a function returning one. Its models get ids ``<source.name>/<name>``.
    Packages can instead declare an entry point in the group
    ``torchbridge.sources``.
    """
    return get_registry().register_source(source, replace=replace)


def register_local_model(
    name: str,
    module_or_state_dict: Any,
    *,
    architecture: str | None = None,
    num_classes: int | None = None,
    description: str | None = None,
    task: str | None = None,
    tags: Iterable[str] = (),
    kwargs: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    directory: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    input_size: tuple[int, ...] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> ModelEntry:
    """register_local_model(name, module_or_state_dict, *, architecture, num_classes=None, ...,
    directory=None, overwrite=False, input_size=None, mean=None, std=None, tokenizer=None,
    trust_remote_code=False) -> ModelEntry

    Save a model's weights as safetensors, with a JSON sidecar, so that
    ``load_model(f"local/{name}")`` builds ``architecture`` (a registry id such
    as ``"timm/resnet18"``) and loads them back. The head size recorded is read
    from the weights (the architecture's classifier tensors; 0 without them);
    ``num_classes``, when given, must agree with it. ``kwargs`` are builder
    arguments to store (JSON values).
    ``input_size`` (one sample in torch order, e.g. ``(3, 32, 32)``) and the
    per-channel ``mean`` and ``std`` describe what the saved model expects;
    each one not given is the architecture's. The files go to ``directory`` or
    ``<torchbridge home>/models`` (``$TORCHBRIDGE_HOME``, else the platform's
    user data folder; for a ``LocalSource(directories=...)``, its first folder).

    A transformers model (``hf/`` architecture) is written in ``save_pretrained``'s
    layout instead: ``<directory>/<name>/`` with its config, ``model.safetensors``
    and tokenizer (``tokenizer``, else the architecture's), and the sidecar
    ``<name>.json``; it loads back as ``local/<name>`` with every tensor equal.
    The architecture's tokenizer is read as :func:`~torchbridge.load_tokenizer`
    reads it: for a repository with its own code (an ``auto_map``), only with
    ``trust_remote_code=True`` (NOTE [trust]); without it, pass ``tokenizer=``.

    A model with a LoRA adapter (``load_model(id, lora=...)``) is saved as its
    adapter alone, in PEFT's format, beside a reference to the base model it
    was loaded from (its id and arguments; ``architecture=`` and ``kwargs=``
    name another, e.g. for a ``peft.PeftModel`` made in torch);
    ``load_model(f"local/{name}")`` loads that base and restores the adapter
    (NOTE [adapters] in :mod:`torchbridge.adapters`).

    Raises:
        InvalidModelIdError: ``name`` is not a file name of letters, digits, ``.``,
            ``_`` and ``-`` (at most 200 characters); nothing is written.
        UnknownModelError: ``architecture`` is not a registry id.
        RegistryError: ``num_classes`` differs from the head the weights hold.
        DuplicateModelError: ``local/<name>`` exists there and ``overwrite`` is false.
        InputSpecError: ``input_size`` is not a tuple of positive ints, ``mean`` or
            ``std`` not one finite float per channel, or an entry of ``std`` is not > 0.
        AdapterError: an adapter whose base model is unknown or has no weights.
        RemoteCodeError: the architecture's tokenizer needs its repository's code, and
            neither ``tokenizer`` nor ``trust_remote_code=True`` is given; nothing is written.
    """
    return get_registry().register_local_model(
        name,
        module_or_state_dict,
        architecture=architecture,
        num_classes=num_classes,
        description=description,
        task=task,
        tags=tags,
        kwargs=kwargs,
        metadata=metadata,
        directory=directory,
        overwrite=overwrite,
        input_size=input_size,
        mean=mean,
        std=std,
        tokenizer=tokenizer,
        trust_remote_code=trust_remote_code,
    )
