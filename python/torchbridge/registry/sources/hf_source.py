"""The Hugging Face source: ``transformers`` models on this machine.

Ids are ``hf/<org>/<name>`` (``hf/<name>`` for a repo without an organisation).
Listed: every model repo in the Hugging Face cache (``$HF_HUB_CACHE``, else
``$HF_HOME/hub``) whose ``config.json`` is a transformers config, and every
folder written by ``save_pretrained`` named in ``$TORCHBRIDGE_HF_DIRS``
(separated by ``os.pathsep``; a folder that holds such folders lists each of
them), named by the folder's name.

Entries are read from ``config.json`` (architecture class, ``model_type``, the
task transformers' own Auto mappings give the class, NOTE [hf tasks] in
:mod:`._hf_tasks`; labels, maximum sequence length, vocabulary and hidden size)
and the cached model card (license); a config is read again only when its file
changes. Listing imports nothing and runs no repository code.

Loading (NOTE [hf loading]):
    the class is the config's architecture (``BertForSequenceClassification``)
    or, with ``task=``, transformers' Auto class for that task; ``task=`` the
    entry's own task is the config's architecture too. Weights load from
    the cached snapshot folder, never through the network when offline;
    safetensors are preferred and a pickled ``pytorch_model.bin`` is read with
    ``weights_only=True``. Offline and not cached is a ``WeightsNotFoundError``
    naming the cache path at once. A repository with its own code (``auto_map``
    in its config) is refused without ``trust_remote_code=True``; an
    architecture the installed transformers does not have is an
    ``UnknownArchitectureError`` naming it and the version. ``num_labels``
    (or ``num_classes``) follows NOTE [head rule]: the body always loads, a new
    head is logged, and the config's ``num_labels`` follows the head.
    transformers loads the folder in place (its model built on the ``meta``
    device, the safetensors files mapped; a sharded checkpoint's
    ``model.safetensors.index.json`` names its shards), in ``dtype=`` when the
    registry passes one, else in the dtype its config records; a ``weights=``
    file loads as NOTE [hf weights files] says.

NOTE [hf weights files]
    ``weights=FILE`` is read safely (:func:`~torchbridge.registry.weights.load_state_dict`)
    and handed to transformers' own ``from_pretrained(None, config=...,
    state_dict=...)``, so it goes through the same key renaming and weight
    conversions as the published weights (transformers 5 renames many saved
    names on load: ViT's ``attention.attention.query`` is ``q_proj``, GPT-NeoX's
    ``embed_out`` is ``lm_head`` ...): a model's own ``save_pretrained`` file
    loads, and so does its ``state_dict()``. The load is strict: a tensor the
    model lacks, one missing (other than a tied weight) or of another shape is
    a ``CorruptWeightsError`` naming each. transformers builds the model on
    the ``meta`` device and takes the file's tensors (mapped, for safetensors)
    in the ``dtype=`` asked for.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import threading
from pathlib import Path
from typing import Any

from ...errors import (
    BrokenEntryError,
    CorruptWeightsError,
    RegistryError,
    UnknownArchitectureError,
    WeightsNotFoundError,
)
from ..entry import ModelEntry, WeightsInfo, read_guarded
from ..heads import classifier_names, settle_head
from ..paths import hf_hub_cache_dir, hf_repo_folder, is_offline
from ..trust import check_remote_code
from ..weights import checkpoint_sha256, shard_files
from ._hf_tasks import AUTO_CLASSES, custom_code_auto_class, task_of_architecture, task_of_config
from .base import ModelSource

__all__ = ["AUTO_CLASSES", "HFSource", "hf_dirs", "task_of_architecture"]

#: tasks whose head has ``num_labels`` outputs
LABEL_TASKS = frozenset(
    {
        "sequence-classification",
        "token-classification",
        "image-classification",
        "audio-classification",
    }
)

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# a Hub repo id: "[org/]name", each part at most 96 characters (as the Hub allows)
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def _first_lines(text: str, lines: int = 6, chars: int = 800) -> str:
    """The start of an upstream message, short enough to read in one error."""
    head = " ".join(line.strip() for line in text.strip().splitlines()[:lines] if line.strip())
    return head if len(head) <= chars else head[: chars - 3] + "..."


def hf_dirs() -> list[Path]:
    """hf_dirs() -> list[Path]: the folders named in ``$TORCHBRIDGE_HF_DIRS``."""
    return [
        Path(p.strip()).expanduser()
        for p in os.environ.get("TORCHBRIDGE_HF_DIRS", "").split(os.pathsep)
        if p.strip()
    ]


def snapshot_dir(repo_dir: Path) -> Path | None:
    """snapshot_dir(repo_dir) -> Path | None: the snapshot ``refs/main`` names, else the newest.

    A snapshot is a folder of the repository's ``snapshots/``: a revision that is not
    a commit hash (``../../elsewhere``), or a snapshot linked out of that folder, is
    never used, so no id reads a folder outside the cache.
    """
    snapshots = repo_dir / "snapshots"
    try:
        revision = (repo_dir / "refs" / "main").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        revision = ""
    if _REVISION.fullmatch(revision):
        snap = snapshots / revision
        if snap.is_dir() and _inside(snap, snapshots):
            return snap
    try:
        named = [p for p in snapshots.iterdir() if _REVISION.fullmatch(p.name)]
        snaps = [p for p in named if (p / "config.json").is_file() and _inside(p, snapshots)]
    except OSError:
        return None
    return max(snaps, key=lambda p: p.stat().st_mtime_ns) if snaps else None


# a snapshot's name: the commit hash huggingface_hub names it by (abbreviated or not)
_REVISION = re.compile(r"[0-9a-f]{7,64}")


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _license(folder: Path) -> str | None:
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")[:4096]
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    for line in text.splitlines()[1:]:
        if line.startswith("---"):
            break
        key, _, value = line.partition(":")
        if key.strip() == "license" and value.strip():
            return value.strip().strip("'\"")
    return None


def _first_int(config: dict, *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    text = config.get("text_config")
    if isinstance(text, dict):
        return _first_int(text, *keys)
    return None


def entry_from_config(name: str, folder: Path, config: dict, *, repo: str | None) -> ModelEntry:
    """entry_from_config(name, folder, config, *, repo) -> ModelEntry: an ``hf/`` entry.

    Raises:
        TypeError: a field the entry is made of has the wrong type (NOTE [broken entries]).
    """
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise TypeError(f"architectures must be a list of class names, got {architectures!r}")
    architecture = architectures[0] if architectures else None
    task = task_of_config(config)
    model_type = str(config.get("model_type") or "")
    id2label = config.get("id2label")
    labels = None
    if isinstance(id2label, dict) and id2label:
        try:
            labels = [id2label[k] for k in sorted(id2label, key=int)]
        except (TypeError, ValueError):
            labels = list(id2label.values())
    num_labels = len(labels) if labels is not None else config.get("num_labels")
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int)):
        raise TypeError(f"num_labels must be an int, got {num_labels!r}")
    if num_labels is None and task in LABEL_TASKS:
        num_labels = 2  # transformers' default, not written to config.json
    max_length = _first_int(config, "max_position_embeddings", "n_positions", "n_ctx")
    vocab = _first_int(config, "vocab_size")
    hidden = _first_int(config, "hidden_size", "n_embd", "d_model", "dim")
    image = _first_int(config, "image_size")
    channels = _first_int(config, "num_channels")
    input_size = (channels or 3, image, image) if image and task.startswith("image") else None
    mean = std = None
    try:
        pre = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
        mean = tuple(float(v) for v in pre.get("image_mean") or ()) or None
        std = tuple(float(v) for v in pre.get("image_std") or ()) or None
    except (OSError, ValueError, TypeError):
        pass
    weight = next((f for f in _WEIGHT_FILES if (folder / f).is_file()), None)
    remote = bool(config.get("auto_map"))
    parts = [architecture or model_type or "transformers model"]
    if task != "unknown":
        parts.append(task.replace("-", " "))
    if task in LABEL_TASKS and num_labels:
        parts.append(f"{num_labels} labels")
    if hidden:
        parts.append(f"hidden {hidden}")
    if vocab:
        parts.append(f"vocabulary {vocab}")
    if remote:
        parts.append("custom code")
    tags = tuple(dict.fromkeys(t for t in ("hf", "transformers", model_type, task) if t))
    return ModelEntry(
        id=f"hf/{name}",
        source="hf",
        name=name,
        task=task,
        description=", ".join(parts),
        pretrained=weight is not None,
        weights=WeightsInfo(
            location=f"hf-hub:{repo}" if repo else str(folder),
            filename=weight,
            path=str(folder / weight) if weight else str(folder),
            cached=weight is not None,
        ),
        input_size=input_size,
        mean=mean,
        std=std,
        num_classes=num_labels if task in LABEL_TASKS else None,
        license=_license(folder),
        tags=tags,
        metadata={
            "folder": str(folder),
            "repo": repo,
            "architecture": architecture,
            "model_type": model_type,
            "labels": labels,
            "num_labels": num_labels,
            "max_length": max_length,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "custom_code": remote,
        },
    )


class HFSource(ModelSource):
    """transformers models in the Hugging Face cache and in ``$TORCHBRIDGE_HF_DIRS``."""

    name = "hf"
    requirement = "transformers (pip install 'torchbridge[hf]')"
    loads_dtype = True  # transformers builds and loads straight in the dtype asked for

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # config.json path -> (mtime_ns, entry or None when it is no transformers config)
        self._cache: dict[tuple[str, Path], tuple[int, ModelEntry | None]] = {}

    def available(self) -> bool:
        return importlib.util.find_spec("transformers") is not None

    def refresh(self) -> None:
        super().refresh()
        with self._lock:
            self._cache.clear()

    # -- listing -------------------------------------------------------------

    def _read(
        self, name: str, folder: Path, repo: str | None
    ) -> ModelEntry | BrokenEntryError | None:
        """The entry of one ``config.json``, read once per version of it; ``None`` when it
        is no transformers config, a BrokenEntryError when it is a malformed one."""
        config_path = folder / "config.json"
        try:
            mtime = config_path.stat().st_mtime_ns
        except OSError:
            return None
        key = (name, config_path)
        with self._lock:
            cached = self._cache.get(key)
        if cached and cached[0] == mtime:
            return cached[1]

        def read() -> ModelEntry | None:
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"it is not valid JSON ({err})") from err
            if isinstance(config, dict) and (
                config.get("model_type") or config.get("architectures")
            ):
                return entry_from_config(name, folder, config, repo=repo)
            return None

        entry = read_guarded(config_path, read)  # NOTE [broken entries]
        with self._lock:
            self._cache[key] = (mtime, entry)
        return entry

    def _cached_repos(self) -> list[tuple[str, Path]]:
        hub = hf_hub_cache_dir()
        try:
            names = sorted(n for n in os.listdir(hub) if n.startswith("models--"))
        except OSError:
            return []
        return [("/".join(n[len("models--") :].split("--")), hub / n) for n in names]

    def _dir_models(self) -> list[tuple[str, Path]]:
        found = []
        for base in hf_dirs():
            if (base / "config.json").is_file():
                found.append((base.name, base))
                continue
            try:
                children = sorted(base.iterdir())
            except OSError:
                continue
            found.extend((c.name, c) for c in children if (c / "config.json").is_file())
        return found

    def entries(self) -> list[ModelEntry | BrokenEntryError]:
        found: dict[str, ModelEntry | BrokenEntryError] = {}
        for repo, repo_dir in self._cached_repos():
            snap = snapshot_dir(repo_dir)
            entry = self._read(repo, snap, repo) if snap is not None else None
            if entry is not None:
                found.setdefault(repo, entry)
        for name, folder in self._dir_models():
            entry = self._read(name, folder, None)
            if entry is not None:
                found.setdefault(name, entry)
        return list(found.values())

    def get(self, name: str) -> ModelEntry | None:
        """One model by name, reading its folder alone (never the whole cache).

        A repo id that is not on this machine gives an entry without weights,
        so that loading it downloads it, or, offline, says where it belongs.
        A name that is no repo id never becomes a cache path (NOTE [ids are names]).
        """
        for dir_name, folder in self._dir_models():
            if dir_name == name:
                return _raised(self._read(name, folder, None))
        if not _REPO_ID.match(name):
            return None
        repo_dir = hf_hub_cache_dir() / hf_repo_folder(name)
        snap = snapshot_dir(repo_dir) if repo_dir.is_dir() else None
        if snap is not None:
            entry = _raised(self._read(name, snap, name))
            if entry is not None:
                return entry
        return ModelEntry(
            id=f"hf/{name}",
            source="hf",
            name=name,
            description=f"{name}: a Hugging Face Hub model, not on this machine",
            pretrained=True,
            weights=WeightsInfo(
                location=f"hf-hub:{name}", filename="model.safetensors", path=str(repo_dir)
            ),
            tags=("hf", "transformers"),
            metadata={"repo": name, "remote": True},
        )

    # -- loading: NOTE [hf loading] --------------------------------------------

    def folder(self, entry: ModelEntry) -> Path:
        """folder(entry) -> Path: the model's files here; downloaded first where allowed.

        Raises:
            WeightsNotFoundError: offline (or the download failed) and not on this machine.
        """
        folder = entry.metadata.get("folder")
        if folder and Path(folder, "config.json").is_file():
            return Path(folder)
        repo = entry.metadata.get("repo") or entry.name
        where = hf_hub_cache_dir() / hf_repo_folder(repo)
        if is_offline():
            raise WeightsNotFoundError(
                f"{entry.id}: the model is not on this machine and offline (TORCHBRIDGE_OFFLINE "
                f"or HF_HUB_OFFLINE is set). Expected the Hugging Face repo {repo} cached under "
                f"{where} (snapshots/<revision>/config.json and model.safetensors). Download it "
                "where the network is allowed (huggingface-cli download "
                f"{repo}), copy that folder here, or name a save_pretrained folder in "
                "TORCHBRIDGE_HF_DIRS."
            )
        from huggingface_hub import snapshot_download

        try:  # the real download, with huggingface_hub's progress bar
            path = snapshot_download(repo, cache_dir=str(hf_hub_cache_dir()))
        except Exception as exc:
            raise WeightsNotFoundError(
                f"{entry.id}: could not download the Hugging Face repo {repo} into {where}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self.refresh()
        return Path(path)

    def weights_identity(self, entry: ModelEntry, *, weights: Path | None) -> dict[str, str]:
        """A ``weights`` file's sha256; else the revision of the cached snapshot that loads
        (``{"revision": <commit>}``), or, for a ``save_pretrained`` folder, the sha256 of its
        weights (every shard)."""
        if weights is not None:
            return super().weights_identity(entry, weights=weights)
        folder = self.folder(entry)
        if folder.parent.name == "snapshots":  # the Hub cache: snapshots/<commit>/
            return {"revision": folder.name}
        file = next((folder / f for f in _WEIGHT_FILES if (folder / f).is_file()), None)
        return {} if file is None else {"sha256": checkpoint_sha256(file)}

    def config(self, entry: ModelEntry, *, trust_remote_code: bool = False, **overrides: Any):
        """config(entry, *, trust_remote_code=False, **overrides) -> PretrainedConfig"""
        folder = self.folder(entry)
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        check_remote_code(entry.id, {"config.json": raw}, trust_remote_code)  # NOTE [trust]
        import transformers

        try:
            return transformers.AutoConfig.from_pretrained(
                str(folder), trust_remote_code=trust_remote_code, **overrides
            )
        except (ValueError, KeyError) as exc:
            if "model_type" in str(exc) or "recognize" in str(exc):
                raise UnknownArchitectureError(
                    f"{entry.id}: its config has model_type {raw.get('model_type')!r}, which "
                    f"transformers {transformers.__version__} does not know. Upgrade "
                    "transformers (pip install -U transformers)."
                ) from exc
            raise

    def model_class(self, entry: ModelEntry, config: Any, task: str | None) -> Any:
        """model_class(entry, config, task) -> the transformers class that builds the model."""
        import transformers

        if task is not None:
            if task not in AUTO_CLASSES:
                raise ValueError(
                    f"{entry.id}: unknown task {task!r}; the tasks are {sorted(AUTO_CLASSES)}"
                )
            return getattr(transformers, AUTO_CLASSES[task])
        architectures = getattr(config, "architectures", None) or []
        arch = architectures[0] if architectures else None
        auto_map = getattr(config, "auto_map", None)
        if auto_map:
            # custom code (trust_remote_code was given): the Auto class resolves it
            return getattr(transformers, custom_code_auto_class(auto_map, arch) or "AutoModel")
        if arch is None:
            return transformers.AutoModel
        cls = getattr(transformers, arch, None)
        if cls is None:
            raise UnknownArchitectureError(
                f"{entry.id}: its config names the architecture {arch!r}, which transformers "
                f"{transformers.__version__} does not have. Upgrade transformers, or load it "
                f"with task= one of {sorted(AUTO_CLASSES)} to use an Auto class for its "
                f"model_type {getattr(config, 'model_type', '?')!r}."
            )
        return cls

    def _split(self, kwargs: dict) -> tuple[str | None, bool, dict, dict]:
        """(task, trust_remote_code, what transformers builds with, config overrides)."""
        task = kwargs.pop("task", None)
        trust = bool(kwargs.pop("trust_remote_code", False))
        dtype = kwargs.pop("dtype", None)  # the registry resolved it (NOTE [precision])
        return task, trust, ({} if dtype is None else {"dtype": dtype}), kwargs

    def classifier(self, entry: ModelEntry, *, trust_remote_code: bool = False) -> tuple[str, ...]:
        """classifier(entry, *, trust_remote_code=False) -> tuple[str, ...]

        The classifier of a classifier (a task of :data:`LABEL_TASKS`), read from the
        model built on the ``meta`` device: for a repository with its own code, that
        code builds it, so it needs ``trust_remote_code`` as loading does (NOTE [trust]).
        """
        task = entry.task
        if task not in LABEL_TASKS:
            return ()
        cache: dict[str, tuple[str, ...]] = vars(self).setdefault("_classifiers", {})
        if entry.id not in cache:
            import torch

            config = self.config(entry, trust_remote_code=trust_remote_code)
            cls = self.model_class(entry, config, None)
            with torch.device("meta"):
                model = _from_config(cls, config, trust_remote_code)
            cache[entry.id] = classifier_names(model)
        return cache[entry.id]

    def load(
        self,
        entry: ModelEntry,
        *,
        pretrained: bool,
        weights: Path | None,
        num_classes: int | None,
        trust_pickle: bool,
        num_labels: int | None = None,
        **kwargs: Any,
    ):
        if num_labels is not None:
            if num_classes is not None and num_classes != num_labels:
                raise ValueError(
                    f"{entry.id}: num_labels={num_labels} and num_classes={num_classes} disagree; "
                    "pass one of them"
                )
            num_classes = num_labels
        if kwargs.get("task") == entry.task:
            kwargs.pop("task")  # the listed task is the listed model: the config's own class
        task = kwargs.get("task")
        if num_classes is not None and (task or entry.task) not in LABEL_TASKS:
            raise RegistryError(
                f"{entry.id}: num_labels applies to a classifier ({sorted(LABEL_TASKS)}); this "
                f"model is {task or entry.task}. Load it with task='sequence-classification' "
                "(or another classification task) to put a classifier on its body."
            )
        if task is not None and task != entry.task and pretrained:
            # another head on the same body: transformers loads the body, a new head
            return self._from_pretrained(entry, weights, trust_pickle, num_classes, **kwargs)
        with_weights = pretrained or weights is not None
        model = super().load(
            entry,
            pretrained=pretrained,
            weights=weights,
            num_classes=None if with_weights else num_classes,
            trust_pickle=trust_pickle,
            **kwargs,
        )
        if with_weights and num_classes is not None:
            # NOTE [head rule] as ModelSource.load applies it, the head named with the
            # caller's trust: a repository's own code builds it
            trust = bool(kwargs.get("trust_remote_code", False))
            model = settle_head(
                model,
                num_classes,
                names=self.classifier(entry, trust_remote_code=trust),
                model_id=entry.id,
                yours=weights is not None,
            )
        if num_classes is not None and getattr(model.config, "num_labels", None) != num_classes:
            model.config.num_labels = num_classes  # the config follows the head (and its labels)
        return model

    def build(self, entry: ModelEntry, *, num_classes: int | None, **kwargs: Any):
        task, trust, build, overrides = self._split(dict(kwargs))
        if num_classes is not None:
            overrides["num_labels"] = num_classes
        config = self.config(entry, trust_remote_code=trust, **overrides)
        return _from_config(self.model_class(entry, config, task), config, trust, **build)

    def build_pretrained(
        self, entry: ModelEntry, *, weights: Path | None, trust_pickle: bool, **kwargs: Any
    ):
        return self._from_pretrained(entry, weights, trust_pickle, None, **kwargs)

    def _from_pretrained(
        self,
        entry: ModelEntry,
        weights: Path | None,
        trust_pickle: bool,
        num_classes: int | None,
        **kwargs: Any,
    ):
        task, trust, build, overrides = self._split(dict(kwargs))
        if weights is not None:  # a file of the caller's: built from the config, loaded safely
            from ..weights import load_state_dict

            state = load_state_dict(weights, trust_pickle=trust_pickle)
            return self.build_holding(
                entry,
                state,
                source=str(weights),
                task=task,
                trust_remote_code=trust,
                **build,
                **overrides,
            )
        folder = self.folder(entry)
        # transformers reads an index's shards itself: each index is checked first
        pickled_index = folder / "pytorch_model.bin.index.json"
        if pickled_index.is_file():
            shard_files(pickled_index)
        safetensors = _safetensors_files(folder)
        config = self.config(entry, trust_remote_code=trust, **overrides)
        if num_classes is not None:
            config.num_labels = num_classes
        cls = self.model_class(entry, config, task)
        _check_weights_cover(entry, folder, safetensors, cls, config, trust)
        try:
            return cls.from_pretrained(
                str(folder),
                config=config,
                local_files_only=True,
                trust_remote_code=trust,
                weights_only=not trust_pickle,
                ignore_mismatched_sizes=num_classes is not None,
                **build,
            )
        except pickle.UnpicklingError as err:  # NOTE [safe loading]: a pickled .bin refused
            raise _refused_pickle(entry, folder, err) from err
        except RuntimeError as err:
            if "ignore_mismatched_sizes" not in str(err) and "size mismatch" not in str(err):
                raise
            # the folder's weights do not fit the model its own config.json describes
            raise CorruptWeightsError(
                f"{entry.id}: the weights in {folder} do not fit the model its config.json "
                f"describes: {_first_lines(str(err))}. The folder is inconsistent: download "
                "or save it again."
            ) from err

    def build_holding(self, entry, state, *, source: str, **kwargs: Any):
        """build_holding(entry, state, *, source, **kwargs) -> PreTrainedModel

        The model with the head size ``state`` holds, loaded from ``state``
        by transformers' own ``from_pretrained`` (NOTE [hf weights files]).
        """
        import torch
        from transformers import PreTrainedModel

        from ..heads import held_classes
        from ..weights import fit_error

        task, trust, build, overrides = self._split(dict(kwargs))
        held = held_classes(state, self.classifier(entry, trust_remote_code=trust))
        if held:
            overrides["num_labels"] = held
        config = self.config(entry, trust_remote_code=trust, **overrides)
        cls = self.model_class(entry, config, task)
        if not issubclass(cls, PreTrainedModel):  # an Auto class: the class it builds here
            with torch.device("meta"):
                cls = type(_from_config(cls, config, trust))
        try:
            model, info = cls.from_pretrained(
                None,
                config=config,
                state_dict=dict(state),
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below, with everything else
                **build,
            )
        except RuntimeError as exc:  # transformers' conversions refused a tensor
            raise CorruptWeightsError(
                f"the weights from {source} do not fit {entry.id}: {str(exc).strip()}"
            ) from exc
        err = fit_error(
            info.get("missing_keys") or (),
            info.get("unexpected_keys") or (),
            (
                f"{key}: file {tuple(have)} vs model {tuple(want)}"
                for key, have, want in info.get("mismatched_keys") or ()
            ),
            source=source,
            model=entry.id,
            names=" (named as transformers loads them)",
        )
        if err is not None:
            raise err
        return model


# NOTE [bounded loading]
# transformers builds the model its config.json describes and fills what the
# weights do not hold with fresh random values: a config of a 65-billion-value
# model beside a few kilobytes of weights would allocate hundreds of GB. Before
# that, the values the folder's safetensors files hold (their headers) are
# compared with those of the model built on the meta device; more missing values
# than MAX_MISSING_VALUES (1 GiB as float32), and than half of what the files
# hold, is a damaged or hostile folder, refused. A new classifier head, or the
# few buffers a checkpoint leaves out, are far below both. Pickled weights are
# not counted without reading them, so they are not checked here.
MAX_MISSING_VALUES = 2**28


def _safetensors_files(folder: Path) -> list[Path]:
    """The safetensors weights of a transformers folder: every shard its index names
    (checked by :func:`shard_files`), or ``model.safetensors``; none for pickled weights."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return shard_files(index)
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def _check_weights_cover(
    entry: ModelEntry, folder: Path, files: list[Path], cls: Any, config: Any, trust: bool
):
    """NOTE [bounded loading]: CorruptWeightsError for a folder whose config.json describes
    a model much larger than its safetensors weights ``files``."""
    import torch

    from ..sizes import _from_architecture, _from_files

    if not files:
        return
    from safetensors import SafetensorError

    try:
        held = _from_files(files).parameters
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptWeightsError(
            f"{entry.id}: the weights in {folder} are not readable safetensors files ({err}). "
            "They are probably truncated or damaged: download or save the folder again."
        ) from err
    with torch.device("meta"):
        needed = _from_architecture(_from_config(cls, config, trust)).parameters
    missing = needed - held
    if missing > MAX_MISSING_VALUES and missing > held // 2:
        raise CorruptWeightsError(
            f"{entry.id}: the config.json in {folder} describes a model of {needed:,} values, "
            f"but its weights hold {held:,}: loading it would fill {missing:,} values with "
            "random ones (at least 1 GiB). The folder is damaged or its files do not belong "
            "together: download or save it again."
        )


def _from_config(cls: Any, config: Any, trust_remote_code: bool, **build: Any) -> Any:
    """An untrained model of ``cls`` from ``config``: a model class, or an Auto class that
    resolves the class (a repository's own, with ``trust_remote_code``)."""
    if hasattr(cls, "from_config"):  # an Auto class
        return cls.from_config(config, trust_remote_code=trust_remote_code, **build)
    return cls._from_config(config, **build)


def _refused_pickle(entry: ModelEntry, folder: Path, err: BaseException) -> Exception:
    """The typed error for transformers' ``weights_only`` load of ``folder`` failing with
    ``err``: UnsafeCheckpointError naming the pickled file that would run code, else
    CorruptWeightsError naming the folder's pickled files."""
    from ...errors import CorruptWeightsError, UnsafeCheckpointError
    from ..weights import unpickling_error

    pickled = sorted(p for p in folder.glob("*.bin") if p.is_file())
    for path in pickled:
        refusal = unpickling_error(path, err)
        if isinstance(refusal, UnsafeCheckpointError):
            return UnsafeCheckpointError(f"{entry.id}: {refusal}")
    # one pickled file names itself; a sharded checkpoint is named by its folder
    corrupt = unpickling_error(pickled[0] if len(pickled) == 1 else folder, err)
    return CorruptWeightsError(f"{entry.id}: {corrupt}")


def _raised(entry: ModelEntry | BrokenEntryError | None) -> ModelEntry | None:
    if isinstance(entry, BrokenEntryError):
        raise entry
    return entry
