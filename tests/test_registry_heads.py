"""The head rule: weights keep their own head; a different num_classes replaces it, logged.

Every checkpoint the project writes (a weight file, ``register_local_model``, a
``fit`` checkpoint) loads back with bit-equal outputs, for timm, torchvision and
torch.hub architectures with a replaced head.
"""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest
import torch

import torchbridge
from test_registry_sources import HUBCONF, TINYNETS
from torchbridge.errors import RegistryError, TrainingError
from torchbridge.registry.sources import hub_source

TIMM = "timm/test_resnet.r160_in1k"
LOGGER = "torchbridge.registry"


def _save(model, path):
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(path))
    return path


def _finetuned(model_id, classes):
    """The architecture with a new head, its weights moved off their initial values."""
    model = torchbridge.load_model(model_id, num_classes=classes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model.eval()


def _same(a, b, x):
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def _dropped(caplog):
    return [r for r in caplog.records if r.name == LOGGER and "dropped" in r.getMessage()]


@pytest.fixture
def hub_repo(tmp_path, monkeypatch):
    """The tiny torch.hub repository of test_registry_sources, added as `tinyrepo`."""
    from torchbridge.registry import add_hub_repo

    monkeypatch.setattr(hub_source, "_ADDED", {})
    repo = tmp_path / "tinyrepo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(HUBCONF))
    (repo / "tinynets.py").write_text(textwrap.dedent(TINYNETS))
    add_hub_repo(repo, trust_repo=True)  # its models load and size their heads: trusted
    return repo


class TestTimmHead:
    def test_file_head_is_kept_when_num_classes_matches(self, tmp_path, isolated_caches):
        """A 7-class file loaded with num_classes=7 keeps its trained head: identical outputs."""
        tuned = _finetuned("timm/test_resnet", 7)
        path = _save(tuned, tmp_path / "w.safetensors")
        model = torchbridge.load_model(TIMM, weights=path, num_classes=7)
        assert _same(model, tuned, torch.randn(2, 3, 32, 32))

    def test_head_size_is_read_from_the_file(self, tmp_path, isolated_caches):
        """Without num_classes the model gets the head size the file holds, with its weights."""
        tuned = _finetuned("timm/test_resnet", 7)
        path = _save(tuned, tmp_path / "w.safetensors")
        model = torchbridge.load_model(TIMM, weights=path)
        assert model.num_classes == 7 and _same(model, tuned, torch.randn(2, 3, 32, 32))

    def test_other_num_classes_replaces_the_head_with_a_warning(
        self, tmp_path, isolated_caches, caplog
    ):
        """A different num_classes gets a new head, keeps the body, and warns which tensors
        of the file's trained head were dropped."""
        tuned = _finetuned("timm/test_resnet", 7)
        path = _save(tuned, tmp_path / "w.safetensors")
        with caplog.at_level(logging.INFO, logger=LOGGER):
            model = torchbridge.load_model(TIMM, weights=path, num_classes=3)
        assert model.fc.out_features == 3
        own, got = tuned.state_dict(), model.state_dict()
        assert all(torch.equal(own[k], got[k]) for k in own if not k.startswith("fc."))
        (record,) = _dropped(caplog)
        assert record.levelno == logging.WARNING
        assert "fc.weight" in record.getMessage() and "fc.bias" in record.getMessage()

    def test_published_head_replaced_for_finetuning_is_info(self, isolated_caches, caplog):
        """Replacing the head of published weights (the start of a finetuning) is logged as
        info, not as a warning."""
        import timm

        from test_registry_listing import make_hf_cache_file

        make_hf_cache_file(
            isolated_caches / "hf" / "hub",
            TIMM,
            "model.safetensors",
            timm.create_model("test_resnet"),
        )
        with caplog.at_level(logging.INFO, logger=LOGGER):
            model = torchbridge.load_model(TIMM, pretrained=True, num_classes=5)
        assert model.fc.out_features == 5
        assert [r.levelno for r in _dropped(caplog)] == [logging.INFO]

    def test_headless_file_loads_headless(self, tmp_path, isolated_caches):
        """A file saved without a classifier gives the headless model; num_classes adds a head."""
        tuned = _finetuned("timm/test_resnet", 0)
        path = _save(tuned, tmp_path / "features.safetensors")
        x = torch.randn(2, 3, 32, 32)
        model = torchbridge.load_model(TIMM, weights=path)
        assert model.num_classes == 0 and _same(model, tuned, x)
        headed = torchbridge.load_model(TIMM, weights=path, num_classes=4)
        assert headed.eval()(x).shape == (2, 4)


# (id, input of two samples, prefix of the head's tensors)
ARCHITECTURES = {
    "timm": ("timm/test_resnet", (3, 32, 32), "fc."),
    "torchvision": ("torchvision/shufflenet_v2_x0_5", (3, 32, 32), "fc."),
    "hub": ("hub/tinyrepo/tiny_net", (8,), "head."),
    "hub-replaced": ("hub/tinyrepo/tiny_plain", (8,), "head."),
}


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request, isolated_caches):
    model_id, size, head = ARCHITECTURES[request.param]
    if model_id.startswith("hub/"):
        request.getfixturevalue("hub_repo")
    return model_id, size, head


class TestRoundTrips:
    """A finetuned model with a 10-class head, saved by each public path, loads back exactly."""

    def test_weights_file(self, arch, tmp_path):
        """weights=FILE gives the file's 10-class head, with or without num_classes=10."""
        model_id, size, _ = arch
        tuned = _finetuned(model_id, 10)
        path = _save(tuned, tmp_path / "tuned.safetensors")
        x = torch.randn(2, *size)
        assert _same(torchbridge.load_model(model_id, weights=path), tuned, x)
        assert _same(torchbridge.load_model(model_id, weights=path, num_classes=10), tuned, x)

    def test_register_local_model(self, arch, tmp_path):
        """register_local_model records the head the weights hold; local/<name> loads them."""
        model_id, size, _ = arch
        tuned = _finetuned(model_id, 10)
        entry = torchbridge.register_local_model("tuned", tuned, architecture=model_id)
        assert entry.num_classes == 10
        assert json.loads(Path(entry.metadata["sidecar"]).read_text())["num_classes"] == 10
        assert _same(torchbridge.load_model("local/tuned"), tuned, torch.randn(2, *size))

    def test_fit_checkpoint(self, arch):
        """fit's checkpoint of a model with a replaced head loads back as the trained model."""
        from torchbridge.train import Checkpoint, fit

        model_id, size, _ = arch
        tuned = _finetuned(model_id, 10)
        batches = [(torch.randn(4, *size), torch.randint(0, 10, (4,))) for _ in range(2)]
        history = fit(
            tuned,
            batches,
            epochs=1,
            optimizer={"rule": "Adam", "eta": 1e-3},
            loss="logitcrossentropy",
            checkpoint=Checkpoint("ckpt", architecture=model_id, save="last"),
            progress=False,
        )
        assert history.checkpoint.num_classes == 10
        assert _same(torchbridge.load_model("local/ckpt"), tuned, torch.randn(2, *size))

    def test_local_model_with_another_head(self, arch):
        """num_classes on a local model replaces the saved head (warned) and keeps the body."""
        model_id, size, head = arch
        tuned = _finetuned(model_id, 10)
        torchbridge.register_local_model("tuned", tuned, architecture=model_id)
        model = torchbridge.load_model("local/tuned", num_classes=3)
        assert model.eval()(torch.randn(2, *size)).shape == (2, 3)
        own, got = tuned.state_dict(), model.state_dict()
        assert all(torch.equal(own[k], got[k]) for k in own if not k.startswith(head))


class TestRecordedHead:
    def test_register_refuses_a_num_classes_the_weights_do_not_hold(self, isolated_caches):
        """num_classes that disagrees with the weights' head is refused before any file is
        written."""
        tuned = _finetuned("torchvision/shufflenet_v2_x0_5", 10)
        with pytest.raises(RegistryError, match="hold a 10-class head"):
            torchbridge.register_local_model(
                "wrong", tuned, architecture="torchvision/shufflenet_v2_x0_5", num_classes=1000
            )
        assert not (isolated_caches / "torchbridge" / "models" / "wrong.json").exists()

    def test_fit_refuses_a_wrong_num_classes_before_training(self, isolated_caches):
        """A Checkpoint num_classes that the model's head does not have fails before any epoch."""
        from torchbridge.train import Checkpoint, fit

        model = _finetuned("timm/test_resnet", 10)
        before = [p.detach().clone() for p in model.parameters()]
        batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
        with pytest.raises(TrainingError, match="has 10 outputs"):
            fit(
                model,
                batches,
                epochs=1,
                optimizer={"rule": "Adam"},
                loss="logitcrossentropy",
                checkpoint=Checkpoint("bad", num_classes=3),
                progress=False,
            )
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class TestExportReadsLikeLoad:
    """export_onnx reads weights and num_classes as load_model does."""

    @pytest.fixture(autouse=True)
    def _onnx(self):
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")

    @pytest.mark.parametrize("model_id", ["timm/test_resnet", "torchvision/shufflenet_v2_x0_5"])
    def test_file_head_exports_with_or_without_num_classes(
        self, model_id, tmp_path, isolated_caches
    ):
        """A 10-class file exports its own head; num_classes=10 says the same; 4 is refused."""
        from torchbridge.errors import ExportError
        from torchbridge.export import export_onnx

        path = _save(_finetuned(model_id, 10), tmp_path / "tuned.safetensors")
        options = dict(input_size=(3, 32, 32), weights=str(path))
        report = export_onnx(model_id, tmp_path / "a.onnx", **options)
        assert report.outputs[0].shape == ("batch", 10)
        with pytest.raises(ExportError, match="random"):
            export_onnx(model_id, tmp_path / "b.onnx", num_classes=4, **options)
        if model_id.startswith("timm/"):
            report = export_onnx(model_id, tmp_path / "c.onnx", num_classes=10, **options)
            assert report.outputs[0].shape == ("batch", 10)
