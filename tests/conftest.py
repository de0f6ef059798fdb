"""Shared fixtures: offline hubs, a seeded RNG, the ``cuda`` marker, a clean ledger."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
def one_torch_thread():
    """torch at one thread for the test: small graphs run fastest so, and far faster on a
    busy machine (OpenMP barriers spin)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def isolated_caches(tmp_path, monkeypatch):
    """Point every model cache (torch.hub, Hugging Face, torchbridge) at an empty folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCHBRIDGE_HOME", str(tmp_path / "torchbridge"))
    return tmp_path


@pytest.fixture(scope="module")
def finetune_models(tmp_path_factory):
    """tests/hf_models.py's finetune_cache (test/tiny-llama, test/tiny-gpt2, test/tiny-bert) in a
    Hugging Face cache of the test module's own, an empty torchbridge home, no
    TORCHBRIDGE_HF_DIRS; yields what finetune_cache made."""
    from hf_models import finetune_cache
    from torchbridge.registry.core import get_registry

    root = tmp_path_factory.mktemp("finetune")
    made = finetune_cache(root / "hub", root / "work")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(root / "hub"))
        mp.setenv("TORCHBRIDGE_HOME", str(root / "home"))
        mp.delenv("TORCHBRIDGE_HF_DIRS", raising=False)
        get_registry().refresh()
        yield made
    get_registry().refresh()


@pytest.fixture
def hf_modules(tmp_path, monkeypatch):
    """transformers copies a trusted repository's own code into a modules folder and imports
    it: here into the test's own folder, and forgotten after the test."""
    pytest.importorskip("transformers")
    from transformers import dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    # another modules folder on the path would give transformers_modules its own contents
    others = [p for p in sys.path if Path(p or ".", "transformers_modules").is_dir()]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in others])
    for name in [n for n in sys.modules if n.startswith("transformers_modules")]:
        monkeypatch.delitem(sys.modules, name)
    yield tmp_path / "modules"
    for name in [n for n in sys.modules if n.startswith("transformers_modules")]:
        del sys.modules[name]


@pytest.fixture
def custom_classifier(tmp_path, monkeypatch, hf_modules):
    """hf/test/custom-classifier (tests/hf_models.py's make_custom_classifier), a model whose
    class is its repository's own code, alone in a Hugging Face cache; yields its weights."""
    from hf_models import cache_repo, make_custom_classifier
    from torchbridge.registry.core import get_registry

    weights = make_custom_classifier(tmp_path / "custom-classifier")
    cache_repo(tmp_path / "hub", "test/custom-classifier", tmp_path / "custom-classifier")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("TORCHBRIDGE_HF_DIRS", raising=False)
    get_registry().refresh()
    yield weights
    get_registry().refresh()
