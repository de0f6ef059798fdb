"""Where models and weights live on this machine, and whether the network may be used.

Every function reads the environment when called (not at import), so a change
of ``TORCH_HOME``, ``HF_HOME`` or ``TORCHBRIDGE_HOME`` takes effect at once.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "folder_names",
    "hf_hub_cache_dir",
    "hf_repo_dir",
    "hf_repo_folder",
    "is_offline",
    "local_models_dir",
    "torch_hub_checkpoints_dir",
    "torch_hub_dir",
    "torchbridge_home",
]

_TRUE = {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """is_offline() -> bool: true when ``TORCHBRIDGE_OFFLINE`` or ``HF_HUB_OFFLINE`` is set."""
    return any(
        os.environ.get(var, "").strip().lower() in _TRUE
        for var in ("TORCHBRIDGE_OFFLINE", "HF_HUB_OFFLINE")
    )


def torchbridge_home() -> Path:
    """torchbridge_home() -> Path: ``$TORCHBRIDGE_HOME``, else the platform's user data folder."""
    env = os.environ.get("TORCHBRIDGE_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("torchbridge", appauthor=False))


def local_models_dir() -> Path:
    """local_models_dir() -> Path: where ``register_local_model`` saves models by default."""
    return torchbridge_home() / "models"


def torch_hub_dir() -> Path:
    """torch_hub_dir() -> Path: torch.hub's folder (``$TORCH_HOME/hub``), where repos are cached."""
    import torch.hub

    return Path(torch.hub.get_dir())


def torch_hub_checkpoints_dir() -> Path:
    """torch_hub_checkpoints_dir() -> Path: where torch.hub, torchvision and timm keep URL
    weights."""
    return torch_hub_dir() / "checkpoints"


def hf_hub_cache_dir() -> Path:
    """hf_hub_cache_dir() -> Path: the Hugging Face Hub cache (``$HF_HUB_CACHE`` or
    ``$HF_HOME/hub``)."""
    # huggingface_hub reads these variables once, at import; read them now instead.
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hf_repo_folder(repo_id: str) -> str:
    """hf_repo_folder(repo_id) -> str: a model repo's folder name in the Hugging Face cache.

    ``"timm/resnet18.a1_in1k"`` (or ``"...@<revision>"``) gives
    ``"models--timm--resnet18.a1_in1k"``.
    """
    return "models--" + repo_id.partition("@")[0].replace("/", "--")


def hf_repo_dir(repo_id: str) -> Path:
    """hf_repo_dir(repo_id) -> Path: the Hugging Face cache folder of a model repo."""
    return hf_hub_cache_dir() / hf_repo_folder(repo_id)


def folder_names(path: Path) -> set[str]:
    """folder_names(path) -> set[str]: the names in a folder; empty when it cannot be listed."""
    try:
        return set(os.listdir(path))
    except OSError:
        return set()
