"""The torch.hub source: repositories with a ``hubconf.py`` on this machine.

Repositories come from torch.hub's cache (``torch.hub.get_dir()``, folders
``owner_repo_ref``), from ``$TORCHBRIDGE_HUB_REPOS`` (folders separated by
``os.pathsep``) and from :func:`add_hub_repo`. Ids are ``hub/<repo>/<entry>``.

NOTE [static hubconf]
    Listing, searching, ``model_info`` and ``feature_channels`` run no code from
    a repository: entry points and their docstrings are read from
    ``hubconf.py`` with :mod:`ast` (see :mod:`._hubconf`). A repository's
    ``hubconf.py`` is imported only when one of its models is loaded, and only
    a trusted repository's (NOTE [trust] in :mod:`torchbridge.registry.trust`:
    ``trust_repo=True``, ``$TORCHBRIDGE_TRUSTED_REPOS``, ``add_hub_repo(...,
    trust_repo=True)``, or ``pytorch/*`` in torch.hub's cache); models are then
    built by calling the entry point, as ``torch.hub.load(folder, entry,
    source="local")`` does. A ``hubconf.py`` that cannot be read is a
    BrokenEntryError (NOTE [broken entries]).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import os
import sys
import threading
from pathlib import Path
from typing import Any

from ...errors import (
    BrokenEntryError,
    RegistryArgumentError,
    RegistryError,
    WeightsNotFoundError,
)
from ..entry import ModelEntry, WeightsInfo, read_guarded
from ..heads import model_classes, replace_classifier
from ..paths import is_offline, torch_hub_checkpoints_dir, torch_hub_dir
from ..trust import check_repo
from ..weights import load_state_dict
from ._hubconf import EntryPoint, read_entry_points
from .base import ModelSource

__all__ = ["HubSource", "add_hub_repo"]

_ADDED: dict[str, Path] = {}
# folders added with trust_repo=True (NOTE [trust])
_ADDED_TRUSTED: set[Path] = set()
_ADDED_LOCK = threading.Lock()


def add_hub_repo(
    path: str | os.PathLike[str], *, name: str | None = None, trust_repo: bool = False
) -> str:
    """add_hub_repo(path, *, name=None, trust_repo=False) -> str: add a local torch.hub
    repository; returns its repo name.

    ``path`` is a folder holding a ``hubconf.py``. Its entry points become
    ``hub/<name>/<entry>`` (``name`` defaults to the folder's name). With
    ``trust_repo=True`` its ``hubconf.py`` may be imported to load its models in
    this process, as if each load passed ``trust_repo=True`` (NOTE [trust]).
    """
    folder = Path(path).expanduser().resolve()
    if not (folder / "hubconf.py").is_file():
        raise RegistryError(
            f"{folder} has no hubconf.py, so it is not a torch.hub repository. "
            "Pass the folder that contains hubconf.py."
        )
    repo = name or folder.name
    if "/" in repo or not repo:
        raise RegistryArgumentError(
            f"hub repo name {repo!r} must be non-empty and contain no '/'; pass name=..."
        )
    with _ADDED_LOCK:
        _ADDED[repo] = folder
        if trust_repo:
            _ADDED_TRUSTED.add(folder)
        else:
            _ADDED_TRUSTED.discard(folder)
    return repo


class HubSource(ModelSource):
    """Entry points of local torch.hub repositories."""

    name = "hub"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # repo folder -> (hubconf mtime, its entries or the BrokenEntryError of its hubconf.py)
        self._cache: dict[Path, tuple[int, list[ModelEntry] | BrokenEntryError]] = {}
        # repo folder -> (hubconf mtime, the imported module): imported once per version
        self._modules: dict[Path, tuple[int, Any]] = {}

    def refresh(self) -> None:
        super().refresh()
        with self._lock:
            self._cache.clear()

    def repos(self) -> dict[str, Path]:
        """repos() -> dict[str, Path]: every known repository, by repo name."""
        found: dict[str, Path] = {}
        hub_dir = torch_hub_dir()
        if hub_dir.is_dir():
            for child in sorted(hub_dir.iterdir()):
                if (child / "hubconf.py").is_file():
                    found[child.name] = child
        for raw in os.environ.get("TORCHBRIDGE_HUB_REPOS", "").split(os.pathsep):
            if raw.strip():
                folder = Path(raw.strip()).expanduser()
                if (folder / "hubconf.py").is_file():
                    found[folder.name] = folder
        with _ADDED_LOCK:
            found.update(_ADDED)
        return found

    # -- listing (no repository code runs) -------------------------------------

    def entries(self) -> list[ModelEntry | BrokenEntryError]:
        out: list[ModelEntry | BrokenEntryError] = []
        for repo, folder in self.repos().items():
            read = self._repo_entries(repo, folder)
            out.extend([read] if isinstance(read, BrokenEntryError) else read)
        return out

    def get(self, name: str) -> ModelEntry | None:
        repo, _, _ = name.partition("/")
        folder = self.repos().get(repo)
        if folder is None:
            return None
        read = self._repo_entries(repo, folder)
        if isinstance(read, BrokenEntryError):
            raise read
        return next((e for e in read if e.name == name), None)

    def _repo_entries(self, repo: str, folder: Path) -> list[ModelEntry] | BrokenEntryError:
        hubconf = folder / "hubconf.py"
        try:
            mtime = hubconf.stat().st_mtime_ns
        except OSError:
            return []
        with self._lock:
            cached = self._cache.get(folder)
        if cached and cached[0] == mtime:
            read = cached[1]
            if isinstance(read, BrokenEntryError) or all(
                e.name.startswith(repo + "/") for e in read
            ):
                return read

        def entries() -> list[ModelEntry]:
            try:
                points = read_entry_points(hubconf)
            except SyntaxError as err:
                raise ValueError(f"it does not parse ({err.msg}, line {err.lineno})") from err
            return [_entry(repo, folder, point) for point in points]

        read = read_guarded(hubconf, entries)  # NOTE [broken entries]
        with self._lock:
            self._cache[folder] = (mtime, read)
        return read

    # -- loading (imports the repository) --------------------------------------

    def build(self, entry: ModelEntry, *, num_classes: int | None, **kwargs: Any):
        function, params = self._entry_point(entry)
        call = dict(kwargs)
        if "pretrained" in params:
            call.setdefault("pretrained", False)
        if "entry_weights" in call:
            call["weights"] = call.pop("entry_weights")
        resize = num_classes
        if num_classes and "num_classes" in params:
            call["num_classes"], resize = num_classes, None
        with _downloads_refused_offline(entry.id):
            model = function(**call)
        if resize is not None and model_classes(model, self.classifier(entry)) != resize:
            replace_classifier(model, resize, model_id=entry.id, names=self.classifier(entry))
        return model

    def build_pretrained(
        self, entry: ModelEntry, *, weights: Path | None, trust_pickle: bool, **kwargs: Any
    ):
        if weights is not None:
            state = load_state_dict(weights, trust_pickle=trust_pickle)
            return self.build_holding(entry, state, source=str(weights), **kwargs)
        function, params = self._entry_point(entry)
        call = dict(kwargs)
        if "pretrained" in params:
            call.setdefault("pretrained", True)
        elif "weights" in params:
            # torchvision-style entry points take weights=<enum name>; "DEFAULT" is the usual one
            call.setdefault("weights", call.pop("entry_weights", "DEFAULT"))
        else:
            raise WeightsNotFoundError(
                f"{entry.id} takes no 'pretrained' or 'weights' argument, so it has no weights "
                "to fetch; pass weights=PATH."
            )
        if "entry_weights" in call:
            call["weights"] = call.pop("entry_weights")
        with _downloads_refused_offline(entry.id):
            return function(**call)

    def _entry_point(self, entry: ModelEntry) -> tuple[Any, tuple[str, ...]]:
        """The entry point's function and parameter names, importing ``hubconf.py``."""
        repo, _, attr = entry.name.partition("/")
        folder = self.repos().get(repo)
        if folder is None:
            raise RegistryError(f"{entry.id}: the hub repo {repo} is no longer on this machine")
        with _ADDED_LOCK:
            added_trusted = _ADDED.get(repo) == folder and folder in _ADDED_TRUSTED
        check_repo(entry.id, repo, folder, added_trusted=added_trusted)  # NOTE [trust]
        module = self._import(entry.id, folder)
        function = getattr(module, attr, None)
        if not callable(function):
            raise RegistryError(
                f"{entry.id}: {folder / 'hubconf.py'} defines no callable {attr!r} once imported"
            )
        try:
            params = tuple(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            params = ()
        return function, params

    def _import(self, model_id: str, folder: Path) -> Any:
        hubconf = folder / "hubconf.py"
        mtime = hubconf.stat().st_mtime_ns
        with self._lock:
            cached = self._modules.get(folder)
        if cached and cached[0] == mtime:
            return cached[1]
        module = _import_hubconf(model_id, folder)
        with self._lock:
            self._modules[folder] = (mtime, module)
        return module


def _entry(repo: str, folder: Path, point: EntryPoint) -> ModelEntry:
    params = point.parameters
    pretrained = params is not None and ("pretrained" in params or "weights" in params)
    description = f"{point.name} from the torch.hub repo {repo}"
    if point.summary:
        description += ": " + point.summary
    return ModelEntry(
        id=f"hub/{repo}/{point.name}",
        source="hub",
        name=f"{repo}/{point.name}",
        task="unknown",
        description=description,
        pretrained=pretrained,
        weights=WeightsInfo(location=f"fetched by {folder / 'hubconf.py'}:{point.name}")
        if pretrained
        else None,
        tags=("hub", repo),
        metadata={"repo_dir": str(folder), "parameters": params or ()},
    )


def _import_hubconf(model_id: str, folder: Path) -> Any:
    """Import ``hubconf.py`` as torch.hub does (its folder first on ``sys.path``), and check
    the packages it lists in ``dependencies``."""
    module_name = "torchbridge_hubconf_" + hashlib.sha1(str(folder).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, folder / "hubconf.py")
    if spec is None or spec.loader is None:
        raise RegistryError(f"{model_id}: {folder / 'hubconf.py'} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))  # hubconf imports modules that sit next to it
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise RegistryError(
            f"{model_id}: {folder / 'hubconf.py'} failed to import ({type(err).__name__}: "
            f"{err}). Install what it needs, or fix the repository."
        ) from err
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))
    dependencies = getattr(module, "dependencies", None) or ()
    missing = [d for d in dependencies if importlib.util.find_spec(d) is None]
    if missing:
        raise RegistryError(
            f"{model_id}: the hub repo {folder} needs {', '.join(missing)}; install "
            f"{'it' if len(missing) == 1 else 'them'} (pip install {' '.join(missing)})."
        )
    return module


_DOWNLOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _downloads_refused_offline(model_id: str):
    """Offline, an entry point that fetches its own weights fails at once, naming the file.

    Entry points download through ``torch.hub.download_url_to_file`` (directly,
    or through ``load_state_dict_from_url``, which looks in the hub cache
    first); offline, that call raises instead of waiting on the network.
    """
    if not is_offline():
        yield
        return
    import torch.hub

    def refuse(url, dst, *args, **kwargs):
        name = Path(str(dst)).name.removesuffix(".partial")
        raise WeightsNotFoundError(
            f"{model_id}: its entry point wants to download {url}, and downloads are off "
            f"(TORCHBRIDGE_OFFLINE or HF_HUB_OFFLINE). Put the file at "
            f"{torch_hub_checkpoints_dir() / name} or pass weights=PATH."
        )

    with _DOWNLOAD_LOCK:
        original = torch.hub.download_url_to_file
        torch.hub.download_url_to_file = refuse
        try:
            yield
        finally:
            torch.hub.download_url_to_file = original
