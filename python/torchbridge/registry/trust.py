"""Who may run code when a model loads: the registry's trust rules, in one place.

NOTE [trust]
    Loading a model can run code from three kinds of files; each runs only when
    the caller said so, and never by answering a prompt:

    * a pickled checkpoint (``.pt``, ``.pth``, ``.bin``): read with
      ``weights_only=True``; full unpickling needs ``trust_pickle=True``
      (NOTE [safe loading] in :mod:`.weights`);
    * a Hugging Face repository's own modules, named by an ``auto_map`` in its
      ``config.json`` or ``tokenizer_config.json``: ``trust_remote_code=True``,
      for models and tokenizers alike (:func:`check_remote_code`);
    * a torch.hub repository's ``hubconf.py``: ``trust_repo=True`` on the load,
      or the repository named as trusted (:func:`check_repo`): in
      ``$TORCHBRIDGE_TRUSTED_REPOS``, by ``add_hub_repo(..., trust_repo=True)``,
      or one of the PyTorch project's own repositories in torch.hub's cache
      (``pytorch/*``, e.g. ``pytorch/vision``), trusted by default as torch.hub
      itself trusts them.

    Information queries (``list_models``, ``search_models``, ``model_info``,
    ``feature_channels``, ``torchbridge list/search/info``, the Julia rows)
    import no repository at all, trusted or not (:func:`information_only`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ..errors import RemoteCodeError, UntrustedRepoError

__all__ = [
    "DEFAULT_TRUSTED_REPOS",
    "TRUSTED_REPOS_ENV",
    "check_remote_code",
    "check_repo",
    "information_only",
    "remote_code_files",
    "trusted_repo_patterns",
    "trusting_repos",
]

#: The environment variable naming trusted torch.hub repositories (NOTE [trust]).
TRUSTED_REPOS_ENV = "TORCHBRIDGE_TRUSTED_REPOS"
#: Trusted without being named: the PyTorch project's own repositories in torch.hub's cache.
DEFAULT_TRUSTED_REPOS = ("pytorch/*",)

# Set for the length of a load_model(..., trust_repo=True) call, nested builds included.
_TRUSTED_LOAD: ContextVar[bool] = ContextVar("torchbridge_trusted_load", default=False)
# Set while an information query runs: no repository is imported then.
_INFORMATION_ONLY: ContextVar[bool] = ContextVar("torchbridge_information_only", default=False)

# "module.Class", or "org/repo--module.Class" (code from another repository)
_CLASS_REF = re.compile(r"^(?:[\w.-]+/[\w.-]+--)?[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+$")


# -- Hugging Face: auto_map -----------------------------------------------------


def remote_code_files(auto_map: Any) -> list[str] | None:
    """remote_code_files(auto_map) -> list[str] | None

    The Python files an ``auto_map`` names (``["modeling_x.py"]``), sorted; ``[]``
    for an empty one; ``None`` when it is malformed (not a mapping of Auto class
    names to ``"module.Class"`` references, or a list of such references, as
    tokenizer configs once wrote it).
    """
    refs: list[Any]
    if isinstance(auto_map, Mapping):
        refs = []
        for key, value in auto_map.items():
            if not isinstance(key, str):
                return None
            refs.extend(value if isinstance(value, (list, tuple)) else [value])
    elif isinstance(auto_map, (list, tuple)):
        refs = list(auto_map)
    else:
        return None
    files = set()
    for ref in refs:
        if ref is None:  # a tokenizer without a slow (or fast) class
            continue
        if not isinstance(ref, str) or not _CLASS_REF.match(ref):
            return None
        module = ref.split("--")[-1].rsplit(".", 1)[0]
        files.add(module.replace(".", "/") + ".py")
    return sorted(files)


def check_remote_code(
    model_id: str,
    configs: Mapping[str, Any],
    trust_remote_code: bool,
    *,
    call: str = "load_model",
) -> None:
    """check_remote_code(model_id, configs, trust_remote_code, *, call="load_model") -> None

    Refuse a model (or tokenizer) whose configs need the repository's own code.
    ``configs`` maps a file name (``"config.json"``) to its parsed contents; an
    ``auto_map`` in any of them needs ``trust_remote_code``. ``call`` is the
    function the caller should pass the switch to.

    Raises:
        RemoteCodeError: an ``auto_map`` names code and ``trust_remote_code`` is
            false; or an ``auto_map`` is malformed (whatever ``trust_remote_code``).
    """
    needed: dict[str, list[str]] = {}
    for name, config in configs.items():
        auto_map = config.get("auto_map") if isinstance(config, Mapping) else None
        if auto_map is None or (isinstance(auto_map, (dict, list, tuple)) and not auto_map):
            continue
        files = remote_code_files(auto_map)
        if files is None:
            raise RemoteCodeError(
                f"{model_id}: the auto_map of its {name} is malformed ({_short(auto_map)}); an "
                "auto_map maps Auto class names to 'module.Class' references of the "
                "repository's own code. It is not loaded; fix the file."
            )
        if files:
            needed[name] = files
    if needed and not trust_remote_code:
        where = "; ".join(f"{', '.join(files)} (from its {name})" for name, files in needed.items())
        raise RemoteCodeError(
            f"{model_id}: this repository needs its own Python code, {where}, which would run "
            f"on this machine. Read it, and pass trust_remote_code=True to {call} if you "
            "trust it."
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


# -- torch.hub: hubconf.py -------------------------------------------------------


def trusted_repo_patterns() -> tuple[str, ...]:
    """trusted_repo_patterns() -> tuple[str, ...]: the trusted torch.hub repositories.

    ``$TORCHBRIDGE_TRUSTED_REPOS`` (separated by commas or spaces), then
    :data:`DEFAULT_TRUSTED_REPOS`. Each is ``owner/repo`` or ``owner/*`` (a
    GitHub repository, or every repository of an owner, as torch.hub caches
    them: ``<owner>_<repo>_<ref>``), or a repository's name as ids spell it
    (the ``<repo>`` of ``hub/<repo>/<entry>``).
    """
    listed = re.split(r"[,\s]+", os.environ.get(TRUSTED_REPOS_ENV, ""))
    return tuple(dict.fromkeys([*(p for p in listed if p), *DEFAULT_TRUSTED_REPOS]))


def _github_folder(folder: Path) -> str | None:
    """The folder's name when torch.hub downloaded it (``<owner>_<repo>_<ref>`` in its cache)."""
    from .paths import torch_hub_dir

    try:
        in_cache = folder.resolve().parent == torch_hub_dir().resolve()
    except OSError:
        return None
    return folder.name if in_cache else None


def _matches(pattern: str, repo: str, folder: Path) -> bool:
    if "/" not in pattern:
        return pattern == repo
    owner, _, name = pattern.partition("/")
    cached = _github_folder(folder)
    if cached is None or not owner or not name:
        return False
    # GitHub owner names hold no '_', so the owner is what precedes the first one
    prefix = f"{owner}_" if name == "*" else f"{owner}_{name}_"
    return cached.casefold().startswith(prefix.casefold())


def listed_as_trusted(repo: str, folder: Path) -> str | None:
    """listed_as_trusted(repo, folder) -> str | None: the pattern that trusts the repository
    ``hub/<repo>/...`` at ``folder``, or ``None``."""
    return next((p for p in trusted_repo_patterns() if _matches(p, repo, folder)), None)


def check_repo(model_id: str, repo: str, folder: Path, *, added_trusted: bool = False) -> None:
    """check_repo(model_id, repo, folder, *, added_trusted=False) -> None

    Allow importing the ``hubconf.py`` of the repository ``repo`` at ``folder``
    only when the load is trusted (:func:`trusting_repos`), the repository was
    added with ``trust_repo=True`` (``added_trusted``) or is listed as trusted,
    and no information query is running.

    Raises:
        UntrustedRepoError: otherwise; the message names the switch and the list.
    """
    hubconf = folder / "hubconf.py"
    if _INFORMATION_ONLY.get():
        raise UntrustedRepoError(
            f"{model_id}: information queries never import a torch.hub repository "
            f"({hubconf}); load the model to build it."
        )
    if _TRUSTED_LOAD.get() or added_trusted or listed_as_trusted(repo, folder):
        return
    cached = _github_folder(folder)
    entry = f"'{cached.split('_')[0]}/<repo>' or '{repo}'" if cached else f"'{repo}'"
    raise UntrustedRepoError(
        f"{model_id}: loading it imports {hubconf}, code of the torch.hub repository {repo} "
        "that would run on this machine. Read it, and pass trust_repo=True to load_model "
        "(or export_onnx; `torchbridge export --trust-repo`) if you trust it (or add "
        f"{entry} to ${TRUSTED_REPOS_ENV})."
    )


@contextlib.contextmanager
def trusting_repos(trust_repo: bool) -> Iterator[None]:
    """trusting_repos(trust_repo) -> context manager

    Inside, with ``trust_repo`` true, the torch.hub repositories a load builds
    on may be imported (a ``local/`` model built from a ``hub/`` entry
    included). With ``trust_repo`` false, the trust of an enclosing load is kept.
    """
    token = _TRUSTED_LOAD.set(True) if trust_repo else None
    try:
        yield
    finally:
        if token is not None:
            _TRUSTED_LOAD.reset(token)


@contextlib.contextmanager
def information_only() -> Iterator[None]:
    """information_only() -> context manager: inside, no repository is imported, trusted or
    not; an attempt raises :class:`UntrustedRepoError`."""
    token = _INFORMATION_ONLY.set(True)
    try:
        yield
    finally:
        _INFORMATION_ONLY.reset(token)
