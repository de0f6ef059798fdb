"""Weights: find them offline-first, check them, and load them without running code.

NOTE [resolution order]
    1. an explicit file (``load_model(..., weights=PATH)``);
    2. the caches that the libraries already use: the Hugging Face Hub cache
       (``$HF_HUB_CACHE``) and torch.hub's ``checkpoints`` folder (shared by
       torch.hub, torchvision and timm's URL weights);
    3. a download, only when neither ``TORCHBRIDGE_OFFLINE`` nor
       ``HF_HUB_OFFLINE`` is set, into those same caches, with a progress bar.
    Offline, a missing file is a :class:`WeightsNotFoundError` that names the
    file, where it would be found, and how to provide it. Nothing waits on the
    network.

NOTE [loading in place]
    A checkpoint is never held twice. safetensors files are mapped, not read:
    each tensor of :func:`load_state_dict` is a private memory map of its bytes
    in the file, read only when it is first touched (a sharded checkpoint,
    ``*.safetensors.index.json``, maps every shard). :func:`load_into_model`
    then makes those tensors the model's own (``load_state_dict(assign=True)``)
    instead of copying them into weights the model allocated, and
    :func:`build_for_loading` builds the model on the ``meta`` device, where
    allocating its weights costs nothing, whenever that is safe (no buffer or
    tensor attribute that the checkpoint does not hold). So the weights are in
    memory once: the pages of the file a forward reads. A tensor whose dtype
    differs from the model's (a bfloat16 file into a float32 model) is
    converted, one tensor at a time. Writes (an optimiser step) copy the page
    they touch; the file itself never changes.

NOTE [safe loading]
    safetensors files hold tensors only. Pickled checkpoints (``.pt``, ``.pth``,
    ``.bin``) can run arbitrary code while loading, so they are read with
    ``torch.load(weights_only=True)``; a checkpoint that needs anything more is
    refused with :class:`UnsafeCheckpointError` unless the caller passed
    ``trust_pickle=True``. Only a real pickle is refused so: one that parses
    to its end (read with :mod:`pickletools`, which runs nothing) and names a
    global that ``weights_only`` does not allow. A file that is no pickle, or
    a damaged one (random bytes, a truncated zip, a text file), is a
    :class:`CorruptWeightsError`: trusting it would not help.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    ChecksumError,
    CorruptWeightsError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from .paths import hf_hub_cache_dir, hf_repo_dir, is_offline, torch_hub_checkpoints_dir

__all__ = [
    "ResolvedWeights",
    "build_for_loading",
    "check_sha256",
    "checkpoint_sha256",
    "download_from_hf",
    "download_url",
    "find_in_hf_cache",
    "find_in_hub_checkpoints",
    "fit_error",
    "hash_prefix_from_filename",
    "hf_repo_dir",
    "load_into_model",
    "load_state_dict",
    "misfit_error",
    "missing_weights_error",
    "resolve_weights_file",
    "sha256_file",
    "shard_files",
    "unpickling_error",
    "url_filename",
]

# torch.hub names URL weights ``<name>-<first hex digits of sha256>.<ext>``.
# At least 8 digits, so that ``model-1.pth`` is not read as a hash.
_HASH_IN_FILENAME = re.compile(r"-([a-f0-9]{8,64})\.")
_SAFETENSORS_SUFFIXES = (".safetensors",)
_INDEX_SUFFIX = ".index.json"  # a sharded checkpoint: model.safetensors.index.json
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ResolvedWeights:
    """A weight file found on this machine.

    Attributes:
        path: The file.
        origin: ``explicit``, ``hf-cache``, ``hub-cache``, ``hf-download`` or ``url-download``.
        sha256: The published sha256 (or prefix) it was checked against, if any.
    """

    path: Path
    origin: str
    sha256: str | None = None


# -- checksums ---------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """sha256_file(path) -> str: the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_sha256(path: str | Path) -> str:
    """checkpoint_sha256(path) -> str: what identifies the tensors a weight file holds.

    The file's sha256; for a sharded checkpoint's index (``*.index.json``), the
    sha256 of the lines ``"<file name> <its sha256>"`` of the index and of every
    shard it names, in order, so that a changed shard changes it too.
    """
    path = Path(path)
    if not path.name.endswith(_INDEX_SUFFIX):
        return sha256_file(path)
    lines = "".join(f"{p.name} {sha256_file(p)}\n" for p in (path, *shard_files(path)))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def hash_prefix_from_filename(filename: str) -> str | None:
    """hash_prefix_from_filename(filename) -> str | None: the sha256 prefix in a torch.hub file
    name.

    ``resnet18-f37072fd.pth`` gives ``"f37072fd"``, as torch.hub's ``check_hash``
    reads it; a name without one gives ``None``.
    """
    match = _HASH_IN_FILENAME.search(Path(filename).name)
    return match.group(1) if match else None


def check_sha256(path: str | Path, expected: str) -> None:
    """check_sha256(path, expected) -> None: raise ChecksumError unless the file's sha256
    matches.

    ``expected`` may be a full digest or its leading hex digits.
    """
    expected = expected.lower()
    actual = sha256_file(path)
    if not actual.startswith(expected):
        raise ChecksumError(
            f"{path}: sha256 is {actual}, but the published value is {expected}. "
            "The file is damaged or is not the published one: delete it and let it be "
            "downloaded again, or pass the right file with weights=PATH."
        )


# -- safe loading ----------------------------------------------------------


def load_state_dict(
    path: str | Path, *, trust_pickle: bool = False, sha256: str | None = None
) -> dict[str, Any]:
    """load_state_dict(path, *, trust_pickle=False, sha256=None) -> dict[str, Tensor]

    Read a weight file onto the CPU. safetensors files are mapped, not read
    (NOTE [loading in place]); pickled files are read with
    ``torch.load(weights_only=True)`` (see NOTE [safe loading]). A sharded
    checkpoint's index (``model.safetensors.index.json``,
    ``pytorch_model.bin.index.json``) loads every shard it names, from its
    folder; ``sha256`` then applies to the index file.
    Training checkpoints that wrap the weights (``{"state_dict": ...}``,
    ``{"model": ...}``) are unwrapped and a ``module.`` prefix left by
    DataParallel is removed.

    Raises:
        WeightsNotFoundError: the file does not exist.
        ChecksumError: ``sha256`` is given and does not match.
        UnsafeCheckpointError: the pickle needs more than tensors and containers,
            and ``trust_pickle`` is false. Nothing in it was run.
        CorruptWeightsError: the file is truncated or is not a weight file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weight file {path} {_not_a_file(path)}. Check the path passed as weights=..."
        )
    if sha256:
        check_sha256(path, sha256)
    if path.name.endswith(_INDEX_SUFFIX):
        state: dict[str, Any] = {}
        for shard in shard_files(path):
            state.update(load_state_dict(shard, trust_pickle=trust_pickle))
        return state
    if path.suffix in _SAFETENSORS_SUFFIXES:
        obj: Any = _load_safetensors(path)
    else:
        obj = _load_pickle(path, trust_pickle=trust_pickle)
    return _unwrap_state_dict(obj, path)


def _not_a_file(path: Path) -> str:
    return "is a folder, not a weight file" if path.is_dir() else "does not exist"


def shard_files(index: str | Path) -> list[Path]:
    """shard_files(index) -> list[Path]: the files a sharded checkpoint's index names.

    ``index`` is a ``*.index.json`` file (transformers' layout: ``{"weight_map":
    {tensor name: file name}}``); the shards are in its folder, in the order
    first named. An index names files of its own folder only: a shard named by
    an absolute path, with a ``..`` part, through a link out of the folder, or
    that is itself an index, is refused before anything is read from it, as is
    an index naming more than :data:`MAX_SHARDS` files.

    Raises:
        CorruptWeightsError: the index is not such a file, names a shard outside
            its folder, or names a shard that is missing.
    """
    import json

    index = Path(index)
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise CorruptWeightsError(
            f"{index} is not a sharded checkpoint's index (a JSON file with a 'weight_map' of "
            f"tensor names to shard files): {type(err).__name__}: {err}"
        ) from err
    if len(names) > MAX_SHARDS:
        raise CorruptWeightsError(
            f"{index} names {len(names)} shard files, more than any checkpoint has "
            f"({MAX_SHARDS} at most); it is not a sharded checkpoint's index."
        )
    folder = index.parent.resolve()
    shards = []
    for name in names:
        problem = _shard_problem(name, folder)
        if problem is not None:
            raise CorruptWeightsError(
                f"{index} names the shard {str(name)[:200]!r}, which {problem}: an index "
                "names files next to it, by their names. Nothing was read from it."
            )
        shards.append(index.parent / name)
    missing = [str(p) for p in shards if not p.is_file()]
    if missing or not shards:
        raise CorruptWeightsError(
            f"{index} names shards that are not in its folder: {_short(missing)}. Copy every "
            "shard next to the index."
            if missing
            else f"{index} names no shard files."
        )
    return shards


# More shard files than any published checkpoint has (the largest hold a few hundred).
MAX_SHARDS = 10_000


def _shard_problem(name: Any, folder: Path) -> str | None:
    """Why a ``weight_map`` value is not a shard of the index in ``folder``, or None."""
    if not isinstance(name, str) or not name or "\x00" in name:
        return "is not a file name"
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        return "is a path, not a file of the index's folder"
    if name.endswith(_INDEX_SUFFIX):
        return "is an index itself"
    if not (folder / path).resolve().is_relative_to(folder):
        return "leads out of the index's folder"
    return None


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptWeightsError(
            f"{path} is not a readable safetensors file ({err}). It is probably truncated "
            "or damaged: delete it and provide it again."
        ) from err


def _load_pickle(path: Path, *, trust_pickle: bool) -> Any:
    import argparse
    import pickle
    import struct
    import zipfile

    import torch

    try:
        # timm's training checkpoints carry their argparse.Namespace: harmless, so allowed
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refusal = unpickling_error(path, err)
        if isinstance(refusal, CorruptWeightsError) or not trust_pickle:
            raise refusal from err
    except PermissionError:
        raise  # an unreadable file is not a damaged one: the OS error says what is wrong
    except (
        RuntimeError,
        EOFError,
        KeyError,
        IndexError,
        ValueError,
        zipfile.BadZipFile,
        struct.error,  # a legacy (non-zip) checkpoint cut inside a record
        AssertionError,  # a legacy checkpoint whose storage keys are damaged
        OSError,  # a small zip checkpoint cut short: torch's reader fails with EINVAL
    ) as err:
        raise _corrupt(path, err) from err

    warnings.warn(
        f"loading {path} with full pickle (trust_pickle=True): this can run code from the file",
        stacklevel=3,
    )
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as err:  # a trusted pickle may fail in any way its code does
        raise _corrupt(path, err) from err


def unpickling_error(
    path: str | Path, err: BaseException
) -> UnsafeCheckpointError | CorruptWeightsError:
    """unpickling_error(path, err) -> UnsafeCheckpointError | CorruptWeightsError

    What ``torch.load(path, weights_only=True)`` failing with ``err`` means
    (NOTE [safe loading]): an :class:`UnsafeCheckpointError` when the file is a
    whole pickle that names a global ``weights_only`` does not allow (it would
    run code), a :class:`CorruptWeightsError` for anything else.
    """
    path = Path(path)
    reason = str(err)
    if "GLOBAL" in reason and _whole_pickle_with_globals(path):
        return UnsafeCheckpointError(
            f"{path} is a pickled checkpoint that needs to run code to load "
            f"({_last_line(reason)}); it was not loaded. Convert it to safetensors, or, only "
            "if you trust where it came from, pass trust_pickle=True."
        )
    return _corrupt(path, err)


# the opcodes that name a global (a class or function the unpickler would import)
_GLOBAL_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST"})
# a legacy (non-zip) torch file is a few pickles in a row: magic number, protocol,
# system info, the object, its storage keys (then raw tensor bytes)
_LEGACY_PICKLES = 5


def _whole_pickle_with_globals(path: Path) -> bool:
    """Whether the pickle torch reads from ``path`` (``data.pkl`` of a zip checkpoint, or
    the pickles of a legacy file) parses to its STOP and names a global. Runs nothing:
    :func:`pickletools.genops` only decodes opcodes."""
    import io
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
                if len(names) != 1:
                    return False
                streams = 1
                stream: Any = io.BytesIO(archive.read(names[0]))
        else:
            streams = _LEGACY_PICKLES
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        try:
            for _ in range(streams):
                # decoded to its STOP first: a damaged stream raises before the answer
                names = {op.name for op, _, _ in pickletools.genops(stream)}
                if names & _GLOBAL_OPCODES:
                    return True
        finally:
            stream.close()
    except Exception:  # noqa: BLE001 - a stream that does not parse is no whole pickle
        return False
    return False


def _corrupt(path: Path, err: BaseException) -> CorruptWeightsError:
    return CorruptWeightsError(
        f"{path} is not a readable checkpoint ({type(err).__name__}: {_last_line(str(err))}). "
        "It is probably truncated or damaged: delete it and provide it again."
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # torch's weights_only message ends with a documentation link; the reason precedes it
    for line in reversed(lines):
        if not line.startswith("Check the documentation"):
            return line[:300]
    return text[:300]


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "state_dict_ema", "model_ema")


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    import torch

    if isinstance(obj, torch.nn.Module):  # trusted full-module pickles
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CorruptWeightsError(
            f"{path} holds a {type(obj).__name__}, not a state dict of tensors. "
            "Save the weights with model.state_dict() (safetensors preferred)."
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def build_for_loading(build: Any) -> Any:
    """build_for_loading(build) -> nn.Module: ``build()`` on the ``meta`` device when that is safe.

    A model about to receive every tensor of a checkpoint need not allocate and
    initialise weights of its own (NOTE [loading in place]). It is built on
    the ``meta`` device unless that fails, or it has a tensor no checkpoint
    holds (a non-persistent buffer such as rotary frequencies, a tensor kept
    as a plain attribute): those are computed when it is built, so it is then
    built again, normally.
    """
    import torch

    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # a builder that needs real tensors (.item() at init ...)
        return build()
    if _holds_unsaved_tensors(model):
        del model
        return build()
    return model


def _holds_unsaved_tensors(model: Any) -> bool:
    import torch

    saved = set(model.state_dict())
    if any(name not in saved for name, _ in model.named_buffers()):
        return True
    return any(
        isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter)
        for module in model.modules()
        for value in vars(module).values()
    )


def _placed(value: Any, device: Any, dtype: Any) -> Any:
    """A checkpoint tensor on the model tensor's device (unless that is ``meta``) and, for
    floating-point ones, in its dtype; itself when it is already so."""
    import torch

    if not isinstance(value, torch.Tensor):
        return value
    if device.type == "meta":
        device = value.device
    if not (value.is_floating_point() and dtype.is_floating_point):
        dtype = value.dtype
    return value.to(device=device, dtype=dtype)


def _tied_groups(model: Any) -> list[list[str]]:
    """Names that share one Parameter object (tied weights), one list per shared parameter."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def load_into_model(model: Any, state_dict: Mapping[str, Any], *, source: str) -> None:
    """load_into_model(model, state_dict, *, source) -> None: a strict load, in place.

    Missing keys, unexpected keys and shape mismatches are all reported, in one
    :class:`CorruptWeightsError`, before anything is loaded. A tied weight
    (one parameter under several names) needs to be in ``state_dict`` under
    one of them; under several, with the same values (else a
    :class:`CorruptWeightsError` naming the keys: one parameter cannot hold
    both). The tensors of ``state_dict`` become the model's own, without
    a copy (NOTE [loading in place]), except those whose floating-point dtype
    or whose device differs from the model's, which are converted; ties are
    kept. ``model`` may be on the ``meta`` device (:func:`build_for_loading`).
    The caller hands the tensors over: they must not be loaded into another model.
    """
    ties = _tied_groups(model)
    given = set(state_dict)
    aliases = {
        name: next(n for n in names if n in given)
        for names in ties
        if any(n in given for n in names)
        for name in names
        if name not in given
    }
    own = model.state_dict()
    missing = sorted(set(own) - given - set(aliases))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    err = fit_error(missing, unexpected, mismatched, source=source)
    if err is not None:
        raise err
    _check_ties(ties, state_dict, source=source)
    places = {k: (t.device, t.dtype) for k, t in own.items()}
    del own  # the model's own weights are freed as they are replaced
    full = {k: _placed(state_dict[aliases.get(k, k)], *place) for k, place in places.items()}
    model.load_state_dict(full, strict=True, assign=True)
    del full
    for names in ties:  # assign=True gave each name its own Parameter: one again
        primary = next((n for n in names if n in given), names[0])
        param = model.get_parameter(primary)
        for name in names:
            if name != primary:
                owner, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(owner), leaf, param)


def _check_ties(ties: list[list[str]], state_dict: Mapping[str, Any], *, source: str) -> None:
    """CorruptWeightsError when a file holds one tied parameter under several of its names with
    different values: loading would keep one of them and silently drop the others."""
    import torch

    for names in ties:
        given = [n for n in names if n in state_dict]
        first = state_dict[given[0]] if given else None
        for name in given[1:]:
            other = state_dict[name]
            if isinstance(first, torch.Tensor) and isinstance(other, torch.Tensor):
                if torch.equal(first, other.to(first.dtype)):
                    continue
            elif first is other:
                continue
            err = CorruptWeightsError(
                f"the weights from {source} hold {given[0]} and {name} with different values, "
                "but the model ties them (one parameter under both names), which cannot hold "
                "both. Save the tied weight once (drop one of the keys), or untie the model's "
                "weights before loading."
            )
            err.tied_keys = (given[0], name)  # type: ignore[attr-defined]
            raise err


def fit_error(
    missing: Iterable[str],
    unexpected: Iterable[str],
    mismatched: Iterable[str],
    *,
    source: str,
    model: str = "the model",
    names: str = "",
) -> CorruptWeightsError | None:
    """fit_error(missing, unexpected, mismatched, *, source, model="the model", names="")
    -> CorruptWeightsError | None

    The error that names every key of a weight file that does not fit a model
    (``mismatched``: ``"key: file (..) vs model (..)"``), with the keys as
    tuples in ``missing_keys``, ``unexpected_keys``, ``mismatched_keys``;
    ``None`` when all three are empty. ``names`` says whose key names they are.
    """
    missing, unexpected, mismatched = sorted(missing), sorted(unexpected), sorted(mismatched)
    if not (missing or unexpected or mismatched):
        return None
    parts = []
    if missing:
        parts.append(f"missing keys {_short(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_short(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatches {_short(mismatched)}")
    err = CorruptWeightsError(
        f"the weights from {source} do not fit {model}: {'; '.join(parts)}{names}. "
        "Check that the file belongs to this architecture (and num_classes)."
    )
    err.missing_keys = tuple(missing)  # type: ignore[attr-defined]
    err.unexpected_keys = tuple(unexpected)  # type: ignore[attr-defined]
    err.mismatched_keys = tuple(mismatched)  # type: ignore[attr-defined]
    return err


def misfit_error(
    reference: Any,
    state_dict: Mapping[str, Any],
    *,
    source: str,
    model_id: str,
    cause: BaseException,
) -> CorruptWeightsError:
    """misfit_error(reference, state_dict, *, source, model_id, cause) -> CorruptWeightsError

    Explain why a library's own ``load_state_dict`` failed, by comparing the
    file's keys and shapes with a freshly built ``reference`` model.
    """
    try:
        load_into_model(reference, state_dict, source=source)
    except CorruptWeightsError as err:
        return err
    return CorruptWeightsError(f"the weights from {source} do not fit {model_id}: {cause}")


def _short(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"[{shown}{more}]"


# -- caches ------------------------------------------------------------------


def find_in_hf_cache(repo_id: str, filenames: Iterable[str]) -> Path | None:
    """find_in_hf_cache(repo_id, filenames) -> Path | None: the first of ``filenames`` cached for
    the repo.

    ``repo_id`` may end in ``@revision``. Never touches the network.
    """
    repo, _, revision = repo_id.partition("@")
    if not hf_repo_dir(repo).is_dir():  # cheap answer for the common case
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(
            repo, filename, cache_dir=str(hf_hub_cache_dir()), revision=revision or None
        )
        if isinstance(found, str):
            return Path(found)
    return None


def find_in_hub_checkpoints(filename: str) -> Path | None:
    """find_in_hub_checkpoints(filename) -> Path | None: the file in torch.hub's checkpoints
    folder."""
    candidate = torch_hub_checkpoints_dir() / filename
    return candidate if candidate.is_file() else None


def url_filename(url: str) -> str:
    """url_filename(url) -> str: the file name torch.hub stores a URL's download under."""
    from urllib.parse import urlparse

    return Path(urlparse(url).path).name


# -- downloads ---------------------------------------------------------------


def download_from_hf(repo_id: str, filenames: Iterable[str]) -> Path:
    """download_from_hf(repo_id, filenames) -> Path: download the first file the repo has.

    Uses ``hf_hub_download`` (its own progress bar, the standard cache).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo, _, revision = repo_id.partition("@")
    names = list(filenames)
    for filename in names:
        try:
            path = hf_hub_download(
                repo, filename, revision=revision or None, cache_dir=str(hf_hub_cache_dir())
            )
            return Path(path)
        except EntryNotFoundError:
            continue
    raise WeightsNotFoundError(f"the Hugging Face repo {repo} has none of the files {names}")


def download_url(url: str) -> Path:
    """download_url(url) -> Path: download into torch.hub's checkpoints folder, checking its
    hash.

    Uses ``torch.hub.download_url_to_file`` with a progress bar; the sha256 prefix
    in the file name, if any, is checked as torch.hub's ``check_hash`` does.
    """
    import torch.hub

    target_dir = torch_hub_checkpoints_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    filename = url_filename(url)
    target = target_dir / filename
    try:
        torch.hub.download_url_to_file(
            url, str(target), hash_prefix=hash_prefix_from_filename(filename), progress=True
        )
    except RuntimeError as err:
        if "invalid hash value" in str(err):
            raise ChecksumError(f"download of {url}: {err}") from err
        raise
    return target


# -- the whole order ---------------------------------------------------------


def resolve_weights_file(
    model_id: str,
    *,
    explicit: str | Path | None = None,
    hf_repo: str | None = None,
    hf_filenames: tuple[str, ...] = (),
    url: str | None = None,
) -> ResolvedWeights:
    """resolve_weights_file(model_id, *, explicit=None, hf_repo=None, hf_filenames=(),
    url=None) -> ResolvedWeights

    Find the weights of ``model_id`` following NOTE [resolution order]. A file
    found in torch.hub's cache or downloaded from a URL is checked against the
    sha256 prefix in its name.

    Raises:
        WeightsNotFoundError: nothing local, and offline (or the download failed).
        ChecksumError: a cached or downloaded file does not match its published hash.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"{model_id}: the weight file {path} passed as weights=... {_not_a_file(path)}."
            )
        return ResolvedWeights(path, "explicit")

    if hf_repo and hf_filenames:
        found = find_in_hf_cache(hf_repo, hf_filenames)
        if found is not None:
            return ResolvedWeights(found, "hf-cache")
    url_name = url_filename(url) if url else None
    if url_name:
        found = find_in_hub_checkpoints(url_name)
        if found is not None:
            expected = hash_prefix_from_filename(url_name)
            if expected:
                check_sha256(found, expected)
            return ResolvedWeights(found, "hub-cache", expected)

    if is_offline():
        raise missing_weights_error(
            model_id, hf_repo=hf_repo, hf_filenames=hf_filenames, url=url, offline=True
        )
    errors: list[str] = []
    if hf_repo and hf_filenames:
        try:
            return ResolvedWeights(download_from_hf(hf_repo, hf_filenames), "hf-download")
        except Exception as err:  # network errors come in many types; fall back to the URL
            errors.append(f"Hugging Face Hub: {type(err).__name__}: {err}")
    if url:
        try:
            path = download_url(url)
            return ResolvedWeights(path, "url-download", hash_prefix_from_filename(path.name))
        except ChecksumError:
            raise
        except Exception as err:
            errors.append(f"{url}: {type(err).__name__}: {err}")
    raise missing_weights_error(
        model_id,
        hf_repo=hf_repo,
        hf_filenames=hf_filenames,
        url=url,
        offline=False,
        download_errors=errors,
    )


def missing_weights_error(
    model_id: str,
    *,
    hf_repo: str | None,
    hf_filenames: tuple[str, ...],
    url: str | None,
    offline: bool,
    download_errors: list[str] | None = None,
) -> WeightsNotFoundError:
    """missing_weights_error(model_id, ...) -> WeightsNotFoundError: the message that says where to
    put the file."""
    places = []
    if hf_repo and hf_filenames:
        places.append(
            f"'{hf_filenames[0]}' of the Hugging Face repo {hf_repo}, "
            f"cached under {hf_repo_dir(hf_repo)} (snapshots/<revision>/{hf_filenames[0]})"
        )
    if url:
        places.append(
            f"'{url_filename(url)}' from {url}, "
            f"at {torch_hub_checkpoints_dir() / url_filename(url)}"
        )
    where = "; or ".join(places) if places else "no published location"
    why = (
        "offline (TORCHBRIDGE_OFFLINE or HF_HUB_OFFLINE is set)"
        if offline
        else "the download failed: " + " | ".join(download_errors or [])
    )
    return WeightsNotFoundError(
        f"{model_id}: pretrained weights are not on this machine and {why}. "
        f"Expected {where}. Provide the file with load_model({model_id!r}, weights=PATH), "
        "or put it at that path."
    )
