"""Shared fixtures: offline hubs, a seeded RNG, the ``cuda`` marker, a clean ledger."""

from __future__ import annotations

import os

# Before anything imports timm or huggingface_hub: never wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCHBRIDGE_OFFLINE", "1")
os.environ.setdefault("PYTHON_JULIAPKG_OFFLINE", "yes")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture
def isolated_caches(tmp_path, monkeypatch):
    """Point every model cache (torch.hub, Hugging Face, torchbridge) at an empty folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCHBRIDGE_HOME", str(tmp_path / "torchbridge"))
    return tmp_path
