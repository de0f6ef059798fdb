"""The local source: weight files on this machine, described by a JSON sidecar.

A local model is two files in a models folder: the weights (safetensors
preferred; ``.pt``/``.pth`` accepted and loaded safely) and ``<name>.json``::

    {
      "architecture": "timm/resnet18",   # a registry id that builds the module
      "weights": "my-model.safetensors", # next to the sidecar
      "num_classes": 10,
      "sha256": "...",                   # optional; checked when present
      "kwargs": {},                      # optional; passed to the architecture
      "description": "...", "task": "...", "tags": [...],
      "input_size": [3, 224, 224], "mean": [...], "std": [...], "license": "..."
    }

``input_size`` (torch order, without the batch), ``mean`` and ``std`` are
those given to :func:`register_local_model`, else the architecture's; a
sidecar without them describes a model without them.

The folders searched: those passed as ``directory=`` to
:func:`register_local_model` in this process, then ``$TORCHBRIDGE_MODEL_DIRS``
(separated by ``os.pathsep``), then ``<torchbridge home>/models``; a
``LocalSource(directories=...)`` searches the folders it is given instead.
Ids are ``local/<name>``.

A local model is built from its architecture through the registry that holds
the source, so a registry of your own loads local models of its own sources.
Loading follows NOTE [head rule]: the head size is read from the saved weights.
One built from a ``hub/`` architecture imports that repository's ``hubconf.py``
when it loads, so it needs the same trust (``trust_repo=True``, NOTE [trust]).

NOTE [sidecars stay in their folder]
    A local name is a file name (``check_local_name``), and every file a
    sidecar names (``weights``, ``onnx``, ``hf_folder``) is a relative path that
    resolves, symbolic links followed, inside the sidecar's own folder. A
    sidecar that names anything else is a BrokenEntryError: nothing outside the
    registry's folders is read or loaded for it.

NOTE [adapter files]
A LoRA adapter (NOTE [adapters] in :mod:`torchbridge.adapters`) is saved
without its base model's weights: ``<name>/`` holds PEFT's
``adapter_config.json`` and ``adapter_model.safetensors``, and the sidecar
``<name>.json`` holds ``"adapter": "<name>"``, the base model as
``"architecture"`` (a registry id) with the arguments that load it as
``"kwargs"`` (``pretrained``, ``num_labels``, ``dtype``, ``weights`` as an
absolute path ...), which weights those were as ``"base_weights"`` (the
source's ``weights_identity``: the sha256 of a ``weights=`` file or of a
local model's file, the revision of a Hugging Face snapshot, the sha256 of a
``save_pretrained`` folder's weights; none for published timm, torchvision
and torch.hub weights, named by their tag), and the sha256 of both adapter
files. ``load_model("local/<name>")`` checks both files (ChecksumError), checks
that the base would load the weights it was trained on before loading it
(AdapterBaseChangedError, saying what changed), loads the base through the
registry (the caller's ``dtype=`` and other arguments override the stored
ones), and restores the adapter, trainable.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ...errors import (
    BrokenEntryError,
    DuplicateModelError,
    InputSpecError,
    InvalidModelIdError,
    RegistryError,
    SidecarValueError,
    TokenizerNotFoundError,
)
from ..entry import ModelEntry, WeightsInfo, read_guarded
from ..heads import held_classes
from ..paths import local_models_dir
from ..weights import load_state_dict, sha256_file
from .base import ModelSource

__all__ = [
    "MAX_NAME_LENGTH",
    "LocalSource",
    "check_local_name",
    "resolve_input_spec",
    "save_local_adapter",
    "save_local_hf_model",
    "save_local_model",
    "save_local_onnx",
]

SIDECAR_FORMAT = "torchbridge.local/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# what a sidecar can hold, as the errors say it
_JSON_VALUES = "JSON values (strings, numbers, booleans, None, and lists and dicts of them)"
#: The longest local name: ``.<name>.safetensors.partial`` still fits a file name.
MAX_NAME_LENGTH = 200


def check_local_name(name: Any, *, what: str = "") -> None:
    """check_local_name(name, *, what="") -> None

    Raise :class:`InvalidModelIdError` unless ``name`` is a local model's name:
    one file name that starts with a letter or digit and holds only letters,
    digits, ``.``, ``_`` and ``-``, at most :data:`MAX_NAME_LENGTH` characters.
    A path (``..``, ``/``, an absolute path) is not a name. Reads nothing on disk.
    ``what`` (the function's name) starts the message.
    """
    if isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and _NAME.match(name):
        return
    shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:60]) + "..."
    long = isinstance(name, str) and len(name) > MAX_NAME_LENGTH
    raise InvalidModelIdError(
        f"{what + ': ' if what else ''}{shown} is not a local model name: "
        + (
            f"it is {len(name)} characters long (at most {MAX_NAME_LENGTH}). "
            if long
            else "a name is not a path. "
        )
        + "A name starts with a letter or digit and holds only letters, digits, '.', '_' "
        "and '-'.",
        f"local/{name}" if isinstance(name, str) else "",
    )


class LocalSource(ModelSource):
    """Models saved on this machine (``register_local_model``, or files you drop in).

    ``directories`` replaces the default folders (``$TORCHBRIDGE_MODEL_DIRS``,
    then ``<torchbridge home>/models``); the first is where models are saved
    when ``register_local_model`` is given no ``directory``.
    """

    name = "local"
    saved_weights = True  # a local model is its weights: they are always loaded
    loads_dtype = True  # passed to the architecture (or transformers), which loads in it

    def __init__(self, directories: Iterable[str | os.PathLike[str]] | None = None) -> None:
        self._lock = threading.Lock()
        self._extra_dirs: list[Path] = []
        self._own_dirs = (
            [Path(d).expanduser().resolve() for d in directories]
            if directories is not None
            else None
        )
        # sidecar path -> (mtime, entry, its BrokenEntryError, or None when it is not a
        # model sidecar)
        self._cache: dict[Path, tuple[int, ModelEntry | BrokenEntryError | None]] = {}

    def add_directory(self, directory: str | os.PathLike[str]) -> None:
        """add_directory(directory) -> None: also look for models in this folder."""
        folder = Path(directory).expanduser().resolve()
        with self._lock:
            if folder not in self._extra_dirs:
                self._extra_dirs.insert(0, folder)

    def directories(self) -> list[Path]:
        """directories() -> list[Path]: the folders searched, first match wins."""
        with self._lock:
            extra = list(self._extra_dirs)
        if self._own_dirs is not None:
            return list(dict.fromkeys([*extra, *self._own_dirs]))
        env = [
            Path(p.strip()).expanduser()
            for p in os.environ.get("TORCHBRIDGE_MODEL_DIRS", "").split(os.pathsep)
            if p.strip()
        ]
        return list(dict.fromkeys([*extra, *env, local_models_dir()]))

    def save_directory(self) -> Path:
        """save_directory() -> Path: where a model is saved when no folder is named."""
        if self._own_dirs:
            return self._own_dirs[0]
        return local_models_dir()

    def refresh(self) -> None:
        super().refresh()
        with self._lock:
            self._cache.clear()

    def entries(self) -> list[ModelEntry | BrokenEntryError]:
        found: dict[str, ModelEntry | BrokenEntryError] = {}
        for folder in self.directories():
            if not folder.is_dir():
                continue
            for sidecar in sorted(folder.glob("*.json")):
                entry = self._read(sidecar)
                if entry is not None and sidecar.stem not in found:
                    found[sidecar.stem] = entry
            # .onnx files dropped in without a sidecar (NOTE [onnx files])
            for file in sorted(folder.glob("*.onnx")):
                if file.stem not in found and not file.with_suffix(".json").is_file():
                    entry = self._read(file)
                    if entry is not None:
                        found[file.stem] = entry
        return list(found.values())

    def get(self, name: str) -> ModelEntry | None:
        check_local_name(name)  # NOTE [ids are names]: before any path is made of it
        for folder in self.directories():
            sidecar = folder / f"{name}.json"
            # exists(), not is_file(): a pipe or a device of that name is a broken entry
            file = sidecar if sidecar.exists() else folder / f"{name}.onnx"
            if file.exists():
                entry = self._read(file)
                if isinstance(entry, BrokenEntryError):
                    raise entry
                if entry is not None:
                    return entry
        return None

    def _read(self, sidecar: Path) -> ModelEntry | BrokenEntryError | None:
        """The entry of one sidecar (or dropped-in .onnx file), read once per version of it."""
        try:
            mtime = sidecar.stat().st_mtime_ns
        except OSError:
            return None
        problem = _not_a_registry_file(sidecar)
        if problem is not None:  # nothing is opened: a pipe would block, a device never end
            return BrokenEntryError(str(sidecar), problem)
        with self._lock:
            cached = self._cache.get(sidecar)
        if cached and cached[0] == mtime:
            return cached[1]
        entry = read_guarded(  # NOTE [broken entries]
            sidecar,
            lambda: (
                _entry_from_onnx(sidecar, {})
                if sidecar.suffix == ".onnx"
                else _entry_from_sidecar(sidecar)
            ),
        )
        with self._lock:
            self._cache[sidecar] = (mtime, entry)
        return entry

    # -- loading: through the architecture, in this source's registry ----------

    def _architecture(self, entry: ModelEntry) -> tuple[Any, ModelEntry]:
        registry = self.registry
        if registry is None:
            raise RegistryError(
                f"{entry.id}: this local source belongs to no registry, so its architecture "
                f"{entry.metadata['architecture']} cannot be built. Add it to a ModelRegistry."
            )
        return registry, registry.model_info(entry.metadata["architecture"])

    def weights_identity(self, entry: ModelEntry, *, weights: Path | None) -> dict[str, str]:
        """A ``weights`` file's sha256; else that of the model's own file (the one its
        sidecar records: loading checks the file against it)."""
        if weights is not None:
            return super().weights_identity(entry, weights=weights)
        recorded = entry.metadata.get("sha256")
        file = entry.metadata.get("onnx_path") or entry.metadata["weights_path"]
        return {"sha256": recorded or sha256_file(file)}

    def classifier(self, entry: ModelEntry) -> tuple[str, ...]:
        if entry.metadata.get("onnx_path"):
            return ()
        registry, architecture = self._architecture(entry)
        return registry.source(architecture.source).classifier(architecture)

    def load(self, entry: ModelEntry, **kwargs: Any):
        if entry.metadata.get("onnx_path"):
            dtype = kwargs.pop("dtype", None)
            model = _load_onnx(entry, **kwargs)
            return model if dtype is None else model.to(dtype)
        if entry.metadata.get("adapter_folder"):
            return self._load_adapter(entry, **kwargs)
        if not entry.metadata.get("hf_folder"):
            return super().load(entry, **kwargs)
        # a transformers model: its own folder (config, weights, tokenizer) is the model
        from ...errors import ChecksumError
        from .hf_source import entry_from_config

        folder = Path(entry.metadata["hf_folder"])
        expected = entry.metadata.get("sha256")
        if expected and kwargs.get("weights") is None:
            got = sha256_file(Path(entry.metadata["weights_path"]))
            if got != expected:
                raise ChecksumError(
                    f"{entry.id}: {entry.metadata['weights_path']} has sha256 {got}, but its "
                    f"sidecar records {expected}; the file changed since it was saved."
                )
        config_file = folder / "config.json"
        if not config_file.is_file():
            from ...errors import WeightsNotFoundError

            raise WeightsNotFoundError(
                f"{entry.id}: {config_file} is not there; a transformers model's folder holds "
                "the config.json, weights and tokenizer files register_local_model wrote."
            )
        hf_entry = read_guarded(
            config_file,
            lambda: entry_from_config(entry.name, folder, _json_object(config_file), repo=None),
        )
        if isinstance(hf_entry, Exception):  # a BrokenEntryError naming the file
            raise hf_entry
        hf = self.registry.source("hf") if self.registry is not None else None
        if hf is None:
            raise RegistryError(f"{entry.id}: this local source belongs to no registry")
        kwargs["pretrained"] = True
        return hf.load(hf_entry, **kwargs)

    def _load_adapter(
        self,
        entry: ModelEntry,
        *,
        pretrained: bool = True,
        weights: Path | None = None,
        num_classes: int | None = None,
        trust_pickle: bool = False,
        **kwargs: Any,
    ):
        """NOTE [adapter files]: the base model through the registry, then its adapter."""
        from ...adapters import BaseModel, check_adapter_folder, restore_adapter
        from ...errors import AdapterError, ChecksumError, WeightsNotFoundError

        if weights is not None:
            raise AdapterError(
                f"{entry.id} is a LoRA adapter: its weights are its own file; load it without "
                "weights=, or load the base model with weights= and add an adapter to it."
            )
        if num_classes is not None and num_classes != entry.num_classes:
            raise AdapterError(
                f"{entry.id}: num_classes={num_classes}, but the adapter was trained on a "
                f"{entry.num_classes}-class head; load it without num_classes."
            )
        registry, architecture = self._architecture(entry)
        adapter = Path(entry.metadata["weights_path"])
        for file, key in (
            (adapter, "sha256"),
            (adapter.parent / "adapter_config.json", "adapter_config_sha256"),
        ):
            expected = entry.metadata.get(key)
            if not expected:
                continue
            if not file.is_file():
                raise WeightsNotFoundError(
                    f"{entry.id}: {file} is not there; an adapter's folder holds the "
                    "adapter_config.json and adapter_model.safetensors register_local_model wrote."
                )
            got = sha256_file(file)
            if got != expected:
                raise ChecksumError(
                    f"{entry.id}: {file} has sha256 {got}, but its sidecar records "
                    f"{expected}; the file changed since it was saved."
                )
        check_adapter_folder(adapter.parent, trust_pickle=trust_pickle)  # before the base loads
        stored = dict(entry.metadata.get("kwargs") or {})
        identity = dict(entry.metadata.get("base_weights") or {})
        if identity:  # before the base loads: the weights it would load are those trained on
            _check_base(entry, registry.source(architecture.source), architecture, stored, identity)
        dtype = kwargs.get("dtype")
        if dtype is not None:  # the record keeps the name, as register_local_model wrote it
            stored["dtype"] = str(dtype).removeprefix("torch.")
        module = registry.load_model(
            architecture.id, trust_pickle=trust_pickle, **{**stored, **kwargs}
        )
        base = BaseModel(architecture.id, stored, identity)
        return restore_adapter(module, adapter.parent, base)

    def build(self, entry: ModelEntry, *, num_classes: int | None, **kwargs: Any):
        registry, architecture = self._architecture(entry)
        build_kwargs = {**entry.metadata.get("kwargs", {}), **kwargs}
        build_kwargs.pop("num_classes", None)  # the head size comes from the weights
        return registry.load_model(
            architecture.id, pretrained=False, num_classes=num_classes, **build_kwargs
        )

    def build_pretrained(
        self, entry: ModelEntry, *, weights: Path | None, trust_pickle: bool, **kwargs: Any
    ):
        file = weights if weights is not None else Path(entry.metadata["weights_path"])
        expected = entry.metadata.get("sha256") if weights is None else None
        state = load_state_dict(file, trust_pickle=trust_pickle, sha256=expected)
        return self.build_holding(entry, state, source=str(file), **kwargs)


def _check_base(
    entry: ModelEntry,
    source: ModelSource,
    architecture: ModelEntry,
    stored: Mapping[str, Any],
    recorded: Mapping[str, str],
) -> None:
    """NOTE [adapter files]: AdapterBaseChangedError unless the weights the adapter's base
    would load now are those ``recorded`` when it was saved, saying what changed and what to do.
    """
    from ...errors import AdapterBaseChangedError

    weights = stored.get("weights")
    trained_on = f"{entry.id} was trained on {architecture.id}"
    if weights is not None and not Path(weights).is_file():
        raise AdapterBaseChangedError(
            f"{trained_on} loaded from the weights {weights}, which are not there any more. "
            f"Put that file back (sha256 {recorded.get('sha256', '?')}) to restore the adapter."
        )
    now = source.weights_identity(architecture, weights=None if weights is None else Path(weights))
    for key, was in recorded.items():
        if now.get(key) == was:
            continue
        if key == "revision":
            repo = architecture.metadata.get("repo") or architecture.name
            raise AdapterBaseChangedError(
                f"{trained_on} at revision {was}, but the Hugging Face cache now holds revision "
                f"{now.get(key)}. Restore that revision (huggingface-cli download {repo} "
                f"--revision {was}, with refs/main naming it), or train a new adapter on this one."
            )
        where = (
            f"the weights {weights}" if weights is not None else f"the weights of {architecture.id}"
        )
        raise AdapterBaseChangedError(
            f"{trained_on} with {where} of {key} {was}, but they now have {key} "
            f"{now.get(key)}: they changed since the adapter was saved. Put the weights it was "
            "trained on back, or train a new adapter on these."
        )


# A sidecar is a few hundred bytes; far more is no sidecar (and is not read whole).
MAX_SIDECAR_BYTES = 1 << 20


def _not_a_registry_file(path: Path) -> str | None:
    """Why ``path``, a ``*.json`` or ``*.onnx`` of a models folder, is not read as an entry:
    not a regular file (a pipe, a device, a folder), a link out of its folder (NOTE
    [sidecars stay in their folder]), or a sidecar too large to be one; None when it is
    fine."""
    import stat

    try:
        info = path.stat()  # the link's target
    except OSError as err:
        return f"it cannot be read ({type(err).__name__}: {err})"
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file (a pipe, a device or a folder); nothing was read"
    if not path.resolve().is_relative_to(path.parent.resolve()):
        return f"it is a link to {path.resolve()}, outside its folder; nothing was read"
    if path.suffix == ".json" and info.st_size > MAX_SIDECAR_BYTES:
        return f"it is larger than a sidecar can be ({MAX_SIDECAR_BYTES:,} bytes)"
    return None


def _json_value(path: Path) -> Any:
    """The JSON value in ``path``; ValueError (for :func:`read_guarded`) when it is none."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"it is not UTF-8 text ({err})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"it is not valid JSON ({err})") from err


def _json_object(path: Path) -> dict:
    """The JSON object in ``path``; ValueError (for :func:`read_guarded`) when it is none."""
    data = _json_value(path)
    if not isinstance(data, dict):
        raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
    return data


def _entry_from_sidecar(sidecar: Path) -> ModelEntry | None:
    """The entry a sidecar describes; ``None`` for a JSON file that is no sidecar.

    Raises (turned into a BrokenEntryError by :func:`read_guarded`): ValueError,
    TypeError, OSError for a sidecar that is not readable JSON, has fields of
    the wrong type, or names a file outside its folder.
    """
    data = _json_value(sidecar)
    if isinstance(data, dict) and data.get("onnx"):
        file = _inside(sidecar, "onnx", data["onnx"])
        return _entry_from_onnx(file, data, sidecar)
    if not isinstance(data, dict) or "architecture" not in data:
        return None  # some other JSON file
    name = sidecar.stem
    if not isinstance(data["architecture"], str):
        raise TypeError(f"architecture must be a registry id, got {data['architecture']!r}")
    weights_name = data.get("weights") or _guess_weights(sidecar)
    if not weights_name:
        raise ValueError("it names no weight file, and none is next to it")
    weights_path = _inside(sidecar, "weights", weights_name)
    for key, kind in (("kwargs", dict), ("metadata", dict)):
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise TypeError(f"{key} must be a JSON object, got {data[key]!r}")
    metadata = dict(data.get("metadata") or {})
    metadata.update(
        architecture=data["architecture"],
        weights_path=str(weights_path),
        sidecar=str(sidecar),
        kwargs=dict(data.get("kwargs") or {}),
    )
    if data.get("sha256"):
        metadata["sha256"] = data["sha256"]
    if data.get("hf_folder"):  # a transformers model in save_pretrained's layout
        metadata["hf_folder"] = str(_inside(sidecar, "hf_folder", data["hf_folder"]))
    if data.get("adapter"):  # NOTE [adapter files]
        metadata["adapter_folder"] = str(_inside(sidecar, "adapter", data["adapter"]))
        config_sha = data.get("adapter_config_sha256")
        if config_sha is not None and not isinstance(config_sha, str):
            raise TypeError(f"adapter_config_sha256 must be a hex string, got {config_sha!r}")
        base_weights = data.get("base_weights")
        if base_weights is not None and not (
            isinstance(base_weights, dict)
            and all(isinstance(v, str) for v in base_weights.values())
        ):
            raise TypeError(f"base_weights must be a JSON object of strings, got {base_weights!r}")
        metadata.update(adapter_config_sha256=config_sha, base_weights=base_weights)
    tags = ("local", "lora") if data.get("adapter") else ("local",)
    return _local_entry(
        name,
        weights_path,
        data,
        task="unknown",
        description=(
            f"{name}: a LoRA adapter on {data['architecture']}"
            if data.get("adapter")
            else f"{name}: local weights for {data['architecture']}"
        ),
        input_size=data.get("input_size") or None,
        tags=tags,
        metadata=metadata,
    )


def _inside(sidecar: Path, key: str, value: Any) -> Path:
    """NOTE [sidecars stay in their folder]: the file a sidecar field names, resolved;
    ValueError unless it is a relative path inside the sidecar's folder."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise TypeError(f"{key} must be a file name next to the sidecar, got {value!r}")
    folder = sidecar.parent.resolve()
    target = (folder / value).resolve()
    if Path(value).is_absolute() or not target.is_relative_to(folder) or target == folder:
        raise ValueError(
            f"{key} {value!r} points outside the sidecar's folder {folder}; a sidecar names "
            "files next to it (a symbolic link must stay inside the folder too)"
        )
    return target


def _local_entry(
    name: str,
    file: Path,
    data: Mapping[str, Any],
    *,
    task: str,
    description: str,
    input_size: tuple[int, ...] | None,
    tags: tuple[str, ...],
    metadata: dict[str, Any],
) -> ModelEntry:
    """The entry of a local model whose weights are ``file``; ``data`` is its sidecar.

    ``task`` and ``description`` are the defaults for a sidecar that names none;
    ``tags`` come before the sidecar's own.
    """
    own_tags = data.get("tags") or []
    sha256 = data.get("sha256")
    if sha256 is not None and not isinstance(sha256, str):
        raise TypeError(f"sha256 must be a hex string, got {sha256!r}")
    # the values are the file's: ModelEntry checks each one's type (NOTE [broken entries])
    return ModelEntry(
        id=f"local/{name}",
        source="local",
        name=name,
        task=data.get("task") or task,
        description=data.get("description") or description,
        pretrained=True,
        weights=WeightsInfo(
            location=str(file),
            filename=file.name,
            path=str(file),
            cached=file.is_file(),
            sha256=sha256,
        ),
        input_size=input_size,
        mean=data.get("mean") or None,
        std=data.get("std") or None,
        num_classes=data.get("num_classes"),
        license=data.get("license"),
        tags=tuple(dict.fromkeys([*tags, *own_tags]))
        if isinstance(own_tags, (list, tuple)) and all(isinstance(t, str) for t in own_tags)
        else own_tags,
        metadata=metadata,
    )


def _guess_weights(sidecar: Path) -> str | None:
    for suffix in _WEIGHT_SUFFIXES:
        candidate = sidecar.with_suffix(suffix)
        if candidate.is_file():
            return candidate.name
    return None


def resolve_input_spec(
    architecture: ModelEntry,
    input_size: Any = None,
    mean: Any = None,
    std: Any = None,
    *,
    what: str = "register_local_model",
) -> tuple[tuple[int, ...] | None, tuple[float, ...] | None, tuple[float, ...] | None]:
    """resolve_input_spec(architecture, input_size=None, mean=None, std=None) -> (size, mean, std)

    The input size and normalisation to record for a model built from
    ``architecture``: each one given, checked, else the architecture's.
    ``input_size`` is a tuple of positive ints in torch order without the
    batch (``(3, 32, 32)``); ``mean`` and ``std`` are sequences of finite
    floats, one per channel (``input_size[0]``), and ``std`` entries are > 0.
    ``what`` starts the error messages.

    Raises:
        InputSpecError: a value given is malformed, or the channel counts disagree.
    """
    size = _positive_ints(input_size, what) if input_size is not None else architecture.input_size
    mean_ = _finite_floats(mean, "mean", what) if mean is not None else architecture.mean
    std_ = _finite_floats(std, "std", what) if std is not None else architecture.std
    if std is not None and any(v <= 0 for v in std_):
        raise InputSpecError(f"{what}: std entries must be > 0, got {list(std_)}")
    channels = size[0] if size else None
    for label, values, given in (("mean", mean_, mean is not None), ("std", std_, std is not None)):
        if values is None or channels is None or len(values) == channels:
            continue
        if given and input_size is None:
            raise InputSpecError(
                f"{what}: {label} has {len(values)} values, but the input size "
                f"{tuple(size)} of {architecture.id} has {channels} channels; pass input_size too"
            )
        if given:
            raise InputSpecError(
                f"{what}: {label} has {len(values)} values, but input_size "
                f"{tuple(size)} has {channels} channels"
            )
        raise InputSpecError(
            f"{what}: input_size {tuple(size)} has {channels} channels, but the {label} of "
            f"{architecture.id} has {len(values)} values; pass {label} for the saved model"
        )
    if mean_ is not None and std_ is not None and len(mean_) != len(std_):
        raise InputSpecError(
            f"{what}: mean has {len(mean_)} values and std {len(std_)}; give one per channel"
        )
    return (
        tuple(size) if size is not None else None,
        tuple(mean_) if mean_ is not None else None,
        tuple(std_) if std_ is not None else None,
    )


def _positive_ints(value: Any, what: str) -> tuple[int, ...]:
    ok = isinstance(value, (tuple, list)) and len(value) > 0
    ok = ok and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in value
    )
    if not ok:
        raise InputSpecError(
            f"{what}: input_size must be a tuple of positive ints in torch order without the "
            f"batch, e.g. (3, 32, 32); got {value!r}"
        )
    return tuple(int(v) for v in value)


def _finite_floats(value: Any, label: str, what: str) -> tuple[float, ...]:
    ok = isinstance(value, (tuple, list)) and len(value) > 0
    ok = ok and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not ok:
        raise InputSpecError(
            f"{what}: {label} must be a sequence of finite floats, one per channel, "
            f"e.g. (0.5, 0.5, 0.5); got {value!r}"
        )
    return tuple(float(v) for v in value)


def save_local_model(
    name: str,
    module_or_state_dict: Any,
    *,
    architecture: ModelEntry,
    num_classes: int | None,
    directory: Path,
    classifier: tuple[str, ...] = (),
    description: str | None = None,
    task: str | None = None,
    tags: tuple[str, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    input_size: Any = None,
    mean: Any = None,
    std: Any = None,
) -> Path:
    """save_local_model(name, module_or_state_dict, *, architecture, ...) -> Path: write weights
    + sidecar.

    ``classifier`` names the architecture's classifier layers: the head size
    recorded is read from the weights (NOTE [head rule]), and a ``num_classes``
    that differs from it is refused. Returns the sidecar's path. See
    :func:`torchbridge.registry.register_local_model`.
    """
    import torch
    from safetensors.torch import save_file

    check_local_name(name, what="register_local_model")
    if architecture.source == "local":
        raise RegistryError(
            f"architecture {architecture.id} is itself a local model: name the architecture it "
            f"was built from ({architecture.metadata.get('architecture')})"
        )
    own_classes = None
    if isinstance(module_or_state_dict, torch.nn.Module):
        state = module_or_state_dict.state_dict()
        own_classes = getattr(module_or_state_dict, "num_classes", None)
    elif isinstance(module_or_state_dict, Mapping):
        state = dict(module_or_state_dict)
    else:
        raise TypeError(
            f"register_local_model: expected a torch.nn.Module or a state dict, "
            f"got {type(module_or_state_dict).__name__}"
        )
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise TypeError(
            f"register_local_model: state dict values must be tensors; not: {not_tensors[:5]}"
        )
    held = held_classes(state, classifier)  # NOTE [head rule]: the weights say
    if num_classes is not None and held is not None and num_classes != held:
        raise RegistryError(
            f"register_local_model: num_classes={num_classes}, but the weights hold a "
            f"{held}-class head ({classifier[0]}); pass num_classes={held}, or none."
        )
    for candidate in (num_classes, held, own_classes, architecture.num_classes):
        if isinstance(candidate, int):
            num_classes = candidate
            break
    input_size, mean, std = resolve_input_spec(architecture, input_size, mean, std)

    data = {
        "format": SIDECAR_FORMAT,
        "architecture": architecture.id,
        "weights": f"{name}.safetensors",
        "sha256": None,  # filled in once the weights are written
        "num_classes": num_classes,
        "task": task or architecture.task,
        "description": description or f"{name}: {architecture.id} with local weights",
        # The architecture's tags and license describe its published weights
        # (``in1k``, a training recipe), not these: only the caller's are kept.
        "tags": list(dict.fromkeys(tags)),
        "input_size": list(input_size) if input_size else None,
        "mean": list(mean) if mean else None,
        "std": list(std) if std else None,
        "license": (metadata or {}).get("license"),
        "kwargs": dict(kwargs or {}),
        "metadata": dict(metadata or {}),
    }
    _check_json(data, "metadata and kwargs are")  # before any file is written

    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / f"{name}.safetensors"
    sidecar = directory / f"{name}.json"
    _refuse_taken(name, directory, weights_path, overwrite=overwrite)

    # safetensors refuses tensors that share memory (tied weights): give each its own copy
    seen: set[tuple[int, int]] = set()
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        value = value.detach().to("cpu").contiguous()
        ident = (value.untyped_storage().data_ptr(), value.storage_offset())
        if value.numel() and ident in seen:
            value = value.clone()
        seen.add(ident)
        tensors[key] = value
    # Both files are written under temporary names and moved in place only once
    # both are complete: a failure while writing leaves no new file behind, and
    # never new weights next to an old sidecar (whose sha256 they would fail).
    partial = weights_path.with_name(weights_path.name + ".partial")
    partial_sidecar = sidecar.with_name(sidecar.name + ".partial")
    try:
        save_file(tensors, str(partial), metadata={"architecture": architecture.id})
        data["sha256"] = sha256_file(partial)
        partial_sidecar.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, weights_path)
        os.replace(partial_sidecar, sidecar)
    finally:
        for leftover in (partial, partial_sidecar):
            leftover.unlink(missing_ok=True)
    return sidecar


def is_transformers_model(module: Any) -> bool:
    """is_transformers_model(module) -> bool: a transformers ``PreTrainedModel`` (duck-typed)."""
    return hasattr(module, "save_pretrained") and hasattr(module, "config")


def save_local_hf_model(
    name: str,
    module: Any,
    *,
    architecture: ModelEntry,
    num_classes: int | None,
    directory: Path,
    tokenizer: Any = None,
    description: str | None = None,
    task: str | None = None,
    tags: tuple[str, ...] = (),
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> Path:
    """save_local_hf_model(name, module, *, architecture, num_classes, directory, ...,
    trust_remote_code=False) -> Path

    A transformers model in ``save_pretrained``'s layout: ``<directory>/<name>/``
    holds ``config.json``, ``model.safetensors`` and the tokenizer's files (the
    ``tokenizer`` given, else the architecture's own, when it has one); the
    sidecar ``<name>.json`` beside it records the weights' sha256. Returns the
    sidecar's path. The architecture's tokenizer is read as
    :func:`~torchbridge.load_tokenizer` reads it: for a repository with its own
    code, only with ``trust_remote_code`` (else a RemoteCodeError, before
    anything is written).
    """
    check_local_name(name, what="register_local_model")
    config = module.config
    labels = getattr(config, "num_labels", None)
    from .hf_source import LABEL_TASKS, task_of_architecture

    arch_name = (getattr(config, "architectures", None) or [type(module).__name__])[0]
    model_type = getattr(config, "model_type", None)
    own_task = task_of_architecture(type(module).__name__, model_type)
    if own_task == "unknown":
        own_task = task_of_architecture(arch_name, model_type)
    if num_classes is not None and own_task in LABEL_TASKS and num_classes != labels:
        raise RegistryError(
            f"register_local_model: num_classes={num_classes}, but the model's head has "
            f"{labels} labels; pass num_classes={labels}, or none."
        )
    if tokenizer is None and architecture.source == "hf":
        from ...text import read_tokenizer

        try:  # a repository's own code: refused unless trusted (NOTE [trust])
            tokenizer = read_tokenizer(
                architecture.id, trust_remote_code=trust_remote_code, call="register_local_model"
            )
        except TokenizerNotFoundError:  # a model without a tokenizer (images) saves none
            tokenizer = None

    data = {
        "format": SIDECAR_FORMAT,
        "architecture": architecture.id,
        "hf_folder": name,
        "weights": f"{name}/model.safetensors",
        "sha256": None,  # filled in once the weights are written
        "num_classes": labels if own_task in LABEL_TASKS else None,
        "task": task or (own_task if own_task != "unknown" else architecture.task),
        "description": description or f"{name}: {arch_name} saved from {architecture.id}",
        "tags": list(dict.fromkeys(["transformers", *tags])),
        "license": (metadata or {}).get("license"),
        "kwargs": {},
        "metadata": dict(metadata or {}),
    }
    _check_json(data, "metadata is")

    def write(partial: Path) -> dict[str, Any]:
        module.save_pretrained(str(partial), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(partial))
        return {**data, "sha256": sha256_file(partial / "model.safetensors")}

    return _save_model_folder(name, directory, write, overwrite=overwrite)


def save_local_adapter(
    name: str,
    model: Any,
    *,
    base: Any,
    directory: Path,
    description: str | None = None,
    task: str | None = None,
    tags: tuple[str, ...] = (),
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """save_local_adapter(name, model, *, base, directory, ...) -> Path

    NOTE [adapter files]: ``<directory>/<name>/`` with the adapter in PEFT's
    format, and the sidecar ``<name>.json`` naming ``base`` (an
    :class:`~torchbridge.adapters.BaseModel`). Returns the sidecar's path; a
    failure leaves nothing behind.
    """
    from ...adapters import save_adapter
    from .hf_source import LABEL_TASKS, task_of_architecture

    check_local_name(name, what="register_local_model")
    module = model.get_base_model()
    config = getattr(module, "config", None)
    own_task = task_of_architecture(type(module).__name__) if config is not None else "unknown"
    labels = getattr(config, "num_labels", None) if own_task in LABEL_TASKS else None
    data = {
        "format": SIDECAR_FORMAT,
        "architecture": base.id,
        "adapter": name,
        "weights": f"{name}/adapter_model.safetensors",
        "sha256": None,  # filled in once the adapter is written
        "num_classes": labels,
        "task": task or (own_task if own_task != "unknown" else None),
        "description": description or f"{name}: a LoRA adapter on {base.id}",
        "tags": list(dict.fromkeys(["lora", *tags])),
        "license": (metadata or {}).get("license"),
        "kwargs": dict(base.kwargs),
        "base_weights": dict(base.identity) or None,
        "metadata": dict(metadata or {}),
    }
    _check_json(  # before any file is written
        data,
        "the arguments the adapter's base model was loaded with, and metadata, are",
        " Name the base with architecture= and kwargs= of JSON values.",
    )

    def write(partial: Path) -> dict[str, Any]:
        weights = save_adapter(model, partial)
        return {
            **data,
            "sha256": sha256_file(weights),
            "adapter_config_sha256": sha256_file(partial / "adapter_config.json"),
        }

    return _save_model_folder(name, directory, write, overwrite=overwrite)


def _check_json(data: Mapping[str, Any], what: str, hint: str = "") -> None:
    """SidecarValueError unless the sidecar ``data`` is JSON; ``what`` names the caller's values
    in it ("metadata is"), ``hint`` ends the message."""
    try:
        json.dumps(data)
    except (TypeError, ValueError) as err:
        raise SidecarValueError(
            f"register_local_model: {what} stored in the sidecar, so must be {_JSON_VALUES}: "
            f"{err}.{hint}"
        ) from err


def _refuse_taken(name: str, directory: Path, *files: Path, overwrite: bool) -> None:
    """DuplicateModelError unless ``overwrite``, when ``directory`` holds ``local/<name>``'s
    sidecar or one of its ``files``."""
    if overwrite:
        return
    if any(p.exists() for p in (directory / f"{name}.json", *files)):
        raise DuplicateModelError(
            f"local/{name} already exists in {directory}. Pick another name or pass overwrite=True."
        )


def _save_model_folder(
    name: str, directory: Path, write: Callable[[Path], dict[str, Any]], *, overwrite: bool
) -> Path:
    """A local model that is a folder: ``<directory>/<name>/``, filled by ``write(folder)``,
    and the sidecar ``<name>.json`` holding the dict ``write`` returns; returns the sidecar.

    ``write`` fills a temporary folder, moved in place with the sidecar once both are
    complete: a failure leaves nothing new behind (and an earlier model of that name, when
    ``overwrite`` is false, as it was). A model of that name there already is a
    DuplicateModelError unless ``overwrite``.
    """
    import shutil

    folder = directory / name
    _refuse_taken(name, directory, folder, overwrite=overwrite)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{name}.partial"
    partial_sidecar = directory / f".{name}.json.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        data = write(partial)
        partial_sidecar.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(partial, folder)
        os.replace(partial_sidecar, directory / f"{name}.json")
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        partial_sidecar.unlink(missing_ok=True)
    return directory / f"{name}.json"


# -- ONNX files ------------------------------------------------------------------------
#
# NOTE [onnx files]
# A local model may be an ONNX file: ``<name>.onnx`` dropped into a models folder
# (its entry is read from the graph), or written by ``register_local_model(name,
# "file.onnx")`` with a sidecar ``<name>.json`` holding ``"onnx": "<name>.onnx"``, its
# sha256 and the caller's description. Its task is ``onnx``, its input size is the
# first graph input's without the batch (when fixed), and it loads through
# :func:`torchbridge.import_onnx` (``verify``, ``inputs``, ``input_shapes``, ``batchnorm``,
# ``trainable`` pass through ``load_model``).


def _entry_from_onnx(
    file: Path, data: Mapping[str, Any], sidecar: Path | None = None
) -> ModelEntry | None:
    from ...onnx_import import input_size_of

    name = sidecar.stem if sidecar is not None else file.stem
    if not _NAME.match(name):
        return None
    size = data.get("input_size") or input_size_of(file)
    metadata = dict(data.get("metadata") or {})
    metadata.update(onnx_path=str(file), kwargs={})
    if sidecar is not None:
        metadata["sidecar"] = str(sidecar)
    if data.get("sha256"):
        metadata["sha256"] = data["sha256"]
    return _local_entry(
        name,
        file,
        data,
        task="onnx",
        description=f"{name}: ONNX graph {file.name}",
        input_size=size,
        tags=("local", "onnx"),
        metadata=metadata,
    )


def _load_onnx(
    entry: ModelEntry,
    *,
    pretrained: bool = True,
    weights: Path | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    verify: bool = True,
    **kwargs: Any,
):
    from ...errors import ChecksumError
    from ...onnx_import import import_onnx

    if weights is not None or num_classes not in (None, entry.num_classes):
        raise RegistryError(
            f"{entry.id} is an ONNX graph: its weights and head are those of the file; "
            "load it without weights= and num_classes=, then change the module in torch."
        )
    file = Path(entry.metadata["onnx_path"])
    expected = entry.metadata.get("sha256")
    if expected:
        got = sha256_file(file)
        if got != expected:
            raise ChecksumError(
                f"{entry.id}: {file} has sha256 {got}, but its sidecar records {expected}; "
                "the file changed since it was registered."
            )
    return import_onnx(file, verify=verify, **kwargs)


def save_local_onnx(
    name: str,
    file: str | os.PathLike[str],
    *,
    directory: Path,
    description: str | None = None,
    task: str | None = None,
    tags: tuple[str, ...] = (),
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    input_size: Any = None,
    mean: Any = None,
    std: Any = None,
) -> Path:
    """save_local_onnx(name, file, *, directory, ...) -> Path: copy an ONNX file and its
    external data into ``directory`` as ``<name>.onnx`` with a sidecar; returns the sidecar.

    The file is checked first (:mod:`torchbridge.onnx_import` reads it: valid ONNX, its
    external data present); a refused file leaves nothing behind.
    """
    import shutil

    import onnx

    from ...onnx_import import _all_tensors, _load

    check_local_name(name, what="register_local_model")
    source = Path(file).expanduser().resolve()
    _load(source)  # OnnxImportError on a file that is not a readable ONNX model
    # the locations as the file names them: loading the data clears them from the tensors
    graph = onnx.load(str(source), load_external_data=False).graph
    data_files = sorted(
        {
            entry.value
            for tensor in _all_tensors(graph)
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )
    del graph
    onnx_entry = ModelEntry(id="local/onnx", source="local", name="onnx")
    size, mean_, std_ = resolve_input_spec(onnx_entry, input_size, mean, std)
    target = directory / f"{name}.onnx"
    sidecar = directory / f"{name}.json"
    _refuse_taken(name, directory, target, overwrite=overwrite)
    for location in data_files:  # a data file is found by its name, next to the .onnx
        there = directory / location
        if there.exists() and sha256_file(there) != sha256_file(source.parent / location):
            raise DuplicateModelError(
                f"register_local_model: {directory} already holds a file {location} of another "
                f"model, and {source.name} names its external data {location} too; it would "
                "replace that model's weights. Register it in another directory=, or save the "
                "ONNX file with another location for its data."
            )
    data = {
        "format": SIDECAR_FORMAT,
        "onnx": target.name,
        "sha256": sha256_file(source),
        "task": task or "onnx",
        "description": description or f"{name}: ONNX graph from {source.name}",
        "tags": list(dict.fromkeys(tags)),
        "input_size": list(size) if size else None,
        "mean": list(mean_) if mean_ else None,
        "std": list(std_) if std_ else None,
        "license": (metadata or {}).get("license"),
        "metadata": dict(metadata or {}),
    }
    _check_json(data, "metadata is")
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    moves = [(source, target), *((source.parent / d, directory / d) for d in data_files)]
    partials = [(src, dst, dst.with_name(f".{dst.name}.partial")) for src, dst in moves]
    partial_sidecar = sidecar.with_name(f".{sidecar.name}.partial")
    done = False
    try:
        for src, dst, partial in partials:
            dst.parent.mkdir(parents=True, exist_ok=True)  # a location such as data/w.bin
            shutil.copyfile(src, partial)
        partial_sidecar.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        for _, dst, partial in partials:
            os.replace(partial, dst)
        os.replace(partial_sidecar, sidecar)
        done = True
    finally:
        for *_, partial in partials:
            partial.unlink(missing_ok=True)
        partial_sidecar.unlink(missing_ok=True)
        if not done:
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return sidecar
