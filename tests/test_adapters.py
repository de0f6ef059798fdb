"""LoRA adapters (torchbridge.adapters) on tiny Llama, GPT-2 and BERT models.

The models are made here (tests/hf_models.py) and laid out as a Hugging Face
cache; nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torchbridge  # noqa: E402
from hf_models import REVISION  # noqa: E402
from torchbridge import memory  # noqa: E402
from torchbridge.adapters import BaseModel, base_of, is_adapter_model  # noqa: E402
from torchbridge.errors import (  # noqa: E402
    AdapterBaseChangedError,
    AdapterError,
    ChecksumError,
    CorruptWeightsError,
    InvalidModelIdError,
    SidecarValueError,
    UnsafeCheckpointError,
)
from torchbridge.registry.core import get_registry  # noqa: E402
from torchbridge.registry.sizes import model_size  # noqa: E402
from torchbridge.registry.sources.local_source import save_local_adapter  # noqa: E402
from torchbridge.registry.weights import sha256_file  # noqa: E402
from torchbridge.train import fit  # noqa: E402

LLAMA, GPT2, BERT = "hf/test/tiny-llama", "hf/test/tiny-gpt2", "hf/test/tiny-bert"
SPEC = {"r": 4, "alpha": 8, "dropout": 0.0, "target": ["q_proj", "v_proj"]}


def token_ids(batch: int = 3, seq: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 40, (batch, seq), generator=torch.Generator().manual_seed(seed))


def perturb_adapter(model) -> None:
    """LoRA's B starts at zero (the adapter adds nothing); give it values, as training would."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))


class TestTheAdapterAlone:
    def test_only_the_adapter_is_shared(self, finetune_models):
        """The bridge shares the adapter's parameters alone: names, gradient buffers, ledger bytes."""
        baseline = memory.snapshot()
        model = torchbridge.load_model(LLAMA, pretrained=True, lora=SPEC)
        assert is_adapter_model(model)
        bm = torchbridge.bridge(model)
        assert len(bm.param_names) == 8  # 2 layers x (q, v) x (A, B)
        assert all(".lora_A." in n or ".lora_B." in n for n in bm.param_names)
        adapter_bytes = sum(p.numel() * p.element_size() for p in bm.params)
        stats = memory.stats()
        assert stats.shared_buffers - baseline.shared_buffers == 16
        assert stats.shared_bytes["cpu"] - baseline.shared_bytes.get("cpu", 0) == 2 * adapter_bytes
        assert sum(p.numel() for p in bm.params) * 10 < sum(p.numel() for p in model.parameters())
        (logits,), pullback = bm.forward(input_ids=token_ids())
        pullback(logits=torch.ones_like(logits))
        assert all(g.abs().sum() > 0 for g in bm.grads[1::2])  # every lora_B
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        bm.close()
        memory.assert_baseline(baseline)

    def test_gradients_equal_torch_autograd(self, finetune_models):
        """The adapter's gradients through the bridge equal torch autograd on the same model."""
        model = torchbridge.load_model(LLAMA, pretrained=True, lora=SPEC)
        perturb_adapter(model)
        reference = copy.deepcopy(model)
        ids = token_ids()
        bm = torchbridge.bridge(model)
        (logits,), pullback = bm.forward(input_ids=ids)
        cotangent = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
        pullback(logits=cotangent)
        reference(input_ids=ids).logits.backward(cotangent)
        for name, grad in zip(bm.param_names, bm.grads):
            assert grad.abs().sum() > 0, name
            torch.testing.assert_close(grad, reference.get_parameter(name).grad)
        bm.close()

    @pytest.mark.parametrize("model_id", [LLAMA, GPT2, BERT])
    def test_fit_trains_the_adapter_and_no_base_weight(self, finetune_models, model_id):
        """fit lowers the loss, changes every adapter tensor (and a new head) and no base weight."""
        classifier = model_id == BERT
        model = torchbridge.load_model(
            model_id,
            pretrained=True,
            lora={"r": 4, "alpha": 8},  # PEFT's targets for the architecture
            **({"num_labels": 2} if classifier else {}),
        )
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        ids = token_ids(4, 10)
        if classifier:  # the new head trains beside the adapter (NOTE [adapters])
            assert {"classifier.modules_to_save.default.weight"} <= {
                n.removeprefix("base_model.model.") for n in trained
            }
            batches = [({"input_ids": ids}, torch.tensor([0, 1, 0, 1]))]
        else:
            batches = [({"input_ids": ids[:, :-1]}, ids[:, 1:])]
        history = fit(
            model,
            batches,
            epochs=6,
            optimizer={"rule": "Adam", "eta": 0.02},
            loss="logitcrossentropy",
            progress=False,
        )
        assert history["train_loss"][-1] < history["train_loss"][0]
        params = dict(model.named_parameters())
        assert all(torch.equal(params[n], before) for n, before in frozen.items())
        assert all(not torch.equal(params[n], before) for n, before in trained.items())

    def test_a_classifier_head_trains_unless_train_says_otherwise(self, finetune_models):
        """A classifier's head is trained by default; train=[] keeps it frozen."""
        model = torchbridge.load_model(BERT, pretrained=True, num_labels=2, lora=True)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert any("classifier.modules_to_save" in n for n in names)
        frozen_head = torchbridge.load_model(
            BERT, pretrained=True, num_labels=2, lora={"train": []}
        )
        names = [n for n, p in frozen_head.named_parameters() if p.requires_grad]
        assert names and all(".lora_" in n for n in names)

    @pytest.mark.parametrize("num_labels", [None, 5])
    def test_the_head_of_a_custom_code_classifier_trains(self, custom_classifier, num_labels):
        """A classifier whose class is its repository's own code (trust_remote_code=True) gets
        its head trained beside the adapter, as any classifier: its published head, or a new one."""
        get_registry().refresh()  # nothing known of it before this load
        model = torchbridge.load_model(
            "hf/test/custom-classifier",
            pretrained=True,
            trust_remote_code=True,
            lora={"r": 2, "target": ["body"]},
            **({} if num_labels is None else {"num_labels": num_labels}),
        )
        trained = {
            n.removeprefix("base_model.model.")
            for n, p in model.named_parameters()
            if p.requires_grad
        }
        assert trained == {
            "body.lora_A.default.weight",
            "body.lora_B.default.weight",
            "classifier.modules_to_save.default.weight",
            "classifier.modules_to_save.default.bias",
        }
        head = model.get_submodule("base_model.model.classifier.modules_to_save.default")
        assert head.out_features == (num_labels or 3)
        if num_labels is None:  # the published head, as the file holds it
            assert torch.equal(head.weight, custom_classifier["classifier.weight"])
        model(torch.randn(2, 4)).square().sum().backward()
        assert head.weight.grad.abs().sum() > 0

    def test_add_lora_on_a_module_built_in_torch(self):
        """add_lora adapts the named layers of any module; the bridge shares those alone."""
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        model = torchbridge.add_lora(module, r=2, target=["0", "2"])
        assert base_of(model) is None
        bm = torchbridge.bridge(model)
        assert [n.split(".lora_")[1] for n in bm.param_names] == [
            "A.default.weight",
            "B.default.weight",
        ] * 2
        assert [tuple(p.shape) for p in bm.params] == [(2, 3), (8, 2), (2, 8), (2, 2)]
        bm.close()


class TestSavingAndMerging:
    def test_round_trip_through_register_local_model(self, finetune_models, tmp_path):
        """The adapter alone is saved, in PEFT's format, beside its base's id; local/ restores it."""
        model = torchbridge.load_model(LLAMA, pretrained=True, lora=SPEC, dtype="bfloat16")
        perturb_adapter(model)
        ids = token_ids()
        expected = model(input_ids=ids).logits
        entry = torchbridge.register_local_model("tiny-llama-lora", model, directory=tmp_path)
        assert entry.id == "local/tiny-llama-lora" and "lora" in entry.tags
        folder = tmp_path / "tiny-llama-lora"
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {
            p.name for p in folder.iterdir()
        }
        assert not list(folder.glob("model*.safetensors"))  # no base weights
        sidecar = json.loads((tmp_path / "tiny-llama-lora.json").read_text())
        assert sidecar["architecture"] == LLAMA and sidecar["adapter"] == "tiny-llama-lora"
        assert sidecar["kwargs"] == {"pretrained": True, "dtype": "bfloat16"}
        assert sidecar["base_weights"] == {"revision": REVISION}  # the snapshot trained on
        assert sidecar["adapter_config_sha256"] == sha256_file(folder / "adapter_config.json")
        adapter_values = sum(p.numel() for p in model.parameters() if p.requires_grad)
        size = model_size("local/tiny-llama-lora")
        assert size.parameters == adapter_values and size.counted_from == "weights file"
        assert size.bytes == {"float32": 4 * adapter_values}  # PEFT keeps the adapter float32

        again = torchbridge.load_model("local/tiny-llama-lora")
        assert base_of(again) == BaseModel(
            LLAMA, {"pretrained": True, "dtype": "bfloat16"}, {"revision": REVISION}
        )
        saved = {n: p for n, p in model.named_parameters() if p.requires_grad}
        restored = {n: p for n, p in again.named_parameters() if p.requires_grad}
        assert saved.keys() == restored.keys()
        assert all(torch.equal(saved[n], restored[n]) for n in saved)
        assert again.get_base_model().dtype == torch.bfloat16
        torch.testing.assert_close(again(input_ids=ids).logits, expected, rtol=0, atol=0)

        with pytest.raises(AdapterError, match="already"):
            torchbridge.load_model("local/tiny-llama-lora", lora=SPEC)
        adapter = folder / "adapter_model.safetensors"
        adapter.write_bytes(adapter.read_bytes()[:-4] + b"\0\0\0\0")
        get_registry().refresh()
        with pytest.raises(ChecksumError, match="changed since it was saved"):
            torchbridge.load_model("local/tiny-llama-lora")

    def test_a_failed_overwrite_keeps_the_earlier_adapter(self, finetune_models, tmp_path):
        """An overwrite that fails while writing (a model holding two adapters) leaves the
        earlier adapter's folder and sidecar as they were, and nothing else."""
        import peft

        model = torchbridge.load_model(LLAMA, pretrained=True, lora=SPEC)
        perturb_adapter(model)
        torchbridge.register_local_model("lora-kept", model, directory=tmp_path)
        before = {
            p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
        }
        model.add_adapter("second", peft.LoraConfig(r=2, target_modules=["q_proj"]))
        with pytest.raises(AdapterError, match="2 adapters"):
            torchbridge.register_local_model("lora-kept", model, directory=tmp_path, overwrite=True)
        after = {
            p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
        }
        assert after == before
        assert is_adapter_model(torchbridge.load_model("local/lora-kept"))

    def test_merged_model_computes_what_the_adapter_did(self, finetune_models):
        """merge_adapter folds the adapter in: a plain model, the same outputs."""
        model = torchbridge.load_model(LLAMA, pretrained=True, lora=SPEC)
        perturb_adapter(model)
        ids = token_ids()
        expected = model(input_ids=ids).logits.detach()
        plain = torchbridge.load_model(LLAMA, pretrained=True)(input_ids=ids).logits.detach()
        assert not torch.allclose(expected, plain)  # the adapter changes the outputs
        merged = torchbridge.merge_adapter(model)
        assert type(merged).__name__ == "LlamaForCausalLM" and not is_adapter_model(merged)
        assert not any("lora" in name for name, _ in merged.named_modules())
        assert not any(p.requires_grad for p in merged.parameters())  # frozen, as PEFT left it
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
        with pytest.raises(AdapterError, match="no LoRA adapter"):
            torchbridge.merge_adapter(merged)

    def test_an_unmerged_adapter_is_not_exported(self, finetune_models, tmp_path):
        """export_onnx refuses a model whose adapter is not merged, saying how, and writes nothing."""
        pytest.importorskip("onnx")
        model = torchbridge.load_model(LLAMA, pretrained=True, lora=SPEC)
        with pytest.raises(torchbridge.ExportError, match="merge_adapter"):
            torchbridge.export_onnx(model, tmp_path / "m.onnx")
        assert not list(tmp_path.iterdir())


class TestTheBaseItWasTrainedOn:
    """NOTE [adapter files]: an adapter is restored onto the weights it was trained on, or not."""

    RESNET_SPEC = {"r": 2, "target": r"layer1\.0\.conv1"}

    def resnet_file(self, path, seed):
        from safetensors.torch import save_file

        torch.manual_seed(seed)
        model = torchbridge.load_model("timm/test_resnet", num_classes=3)
        save_file(model.state_dict(), str(path))
        return model.state_dict()

    def test_a_weights_file_is_recorded_by_its_path_and_sha256(self, tmp_path, monkeypatch):
        """weights= is recorded resolved and hashed: the adapter restores onto that file from
        any folder, and a changed or missing file is an AdapterBaseChangedError."""
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        monkeypatch.chdir(tmp_path / "a")
        trained_on = self.resnet_file(tmp_path / "a" / "w.safetensors", seed=0)
        model = torchbridge.load_model(
            "timm/test_resnet", weights="w.safetensors", lora=self.RESNET_SPEC
        )
        assert base_of(model).kwargs["weights"] == str(tmp_path / "a" / "w.safetensors")
        torchbridge.register_local_model("resnet-lora-file", model, directory=tmp_path / "m")
        sidecar = json.loads((tmp_path / "m" / "resnet-lora-file.json").read_text())
        assert sidecar["base_weights"] == {"sha256": sha256_file(tmp_path / "a" / "w.safetensors")}

        monkeypatch.chdir(tmp_path / "b")  # another w.safetensors here
        self.resnet_file(tmp_path / "b" / "w.safetensors", seed=1)
        again = torchbridge.load_model("local/resnet-lora-file")
        base = again.get_base_model().state_dict()
        assert all(torch.equal(base[k], v) for k, v in trained_on.items() if k.startswith("conv"))

        self.resnet_file(tmp_path / "a" / "w.safetensors", seed=2)  # the file changed
        with pytest.raises(AdapterBaseChangedError, match="changed since the adapter was saved"):
            torchbridge.load_model("local/resnet-lora-file")
        (tmp_path / "a" / "w.safetensors").unlink()
        with pytest.raises(AdapterBaseChangedError, match="not there any more") as info:
            torchbridge.load_model("local/resnet-lora-file")
        assert isinstance(info.value, ChecksumError) and isinstance(info.value, AdapterError)

    def test_a_local_base_registered_again_is_refused(self, tmp_path):
        """An adapter on local/<name> is not restored onto another model saved under that name."""
        folder = tmp_path / "m"
        net = torchbridge.load_model("timm/test_resnet", num_classes=3)
        torchbridge.register_local_model(
            "resnet-base", net, architecture="timm/test_resnet", directory=folder
        )
        model = torchbridge.load_model("local/resnet-base", lora=self.RESNET_SPEC)
        torchbridge.register_local_model("resnet-base-lora", model, directory=folder)
        assert is_adapter_model(torchbridge.load_model("local/resnet-base-lora"))
        torch.manual_seed(5)
        other = torchbridge.load_model("timm/test_resnet", num_classes=3)
        torchbridge.register_local_model(
            "resnet-base", other, architecture="timm/test_resnet", directory=folder, overwrite=True
        )
        with pytest.raises(AdapterBaseChangedError, match="local/resnet-base"):
            torchbridge.load_model("local/resnet-base-lora")

    def test_a_hugging_face_base_is_recorded_by_its_revision(self, finetune_models, tmp_path):
        """A cached hf/ base is its snapshot's revision: another snapshot under refs/main is
        refused, naming both revisions; the one trained on restores again."""
        model = torchbridge.load_model(BERT, pretrained=True, lora={"r": 2})
        torchbridge.register_local_model("bert-lora-revision", model, directory=tmp_path)
        sidecar = json.loads((tmp_path / "bert-lora-revision.json").read_text())
        assert sidecar["base_weights"] == {"revision": REVISION}
        repo = _cache_dir("test/tiny-bert")
        newer = "f" * 40
        (repo / "snapshots" / REVISION).rename(repo / "snapshots" / newer)
        (repo / "refs" / "main").write_text(newer)
        get_registry().refresh()
        try:
            with pytest.raises(AdapterBaseChangedError, match=f"revision {REVISION}.*{newer}"):
                torchbridge.load_model("local/bert-lora-revision")
        finally:
            (repo / "snapshots" / newer).rename(repo / "snapshots" / REVISION)
            (repo / "refs" / "main").write_text(REVISION)
            get_registry().refresh()
        assert is_adapter_model(torchbridge.load_model("local/bert-lora-revision"))

    def test_a_changed_adapter_config_is_refused(self, finetune_models, tmp_path):
        """adapter_config.json is hashed with the adapter: a changed lora_alpha is a
        ChecksumError, not an adapter silently scaled otherwise."""
        model = torchbridge.load_model(LLAMA, pretrained=True, lora=SPEC)
        torchbridge.register_local_model("llama-lora-config", model, directory=tmp_path)
        config = tmp_path / "llama-lora-config" / "adapter_config.json"
        data = json.loads(config.read_text())
        config.write_text(json.dumps({**data, "lora_alpha": 2 * data["lora_alpha"]}))
        with pytest.raises(ChecksumError, match="adapter_config.json.*changed since it was saved"):
            torchbridge.load_model("local/llama-lora-config")


class _ShellPayload:
    """Pickles as a call to os.system: loading it runs `touch <marker>`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class TestHostileAdapterFolders:
    """An adapter folder and sidecar written by someone else (no recorded hashes to catch a
    change) give typed errors, and run nothing."""

    @pytest.fixture
    def hostile(self, finetune_models, tmp_path):
        model = torchbridge.load_model(LLAMA, pretrained=True, lora=SPEC)
        torchbridge.register_local_model("hostile", model, directory=tmp_path)
        sidecar = tmp_path / "hostile.json"
        data = json.loads(sidecar.read_text())
        for key in ("sha256", "adapter_config_sha256"):
            data.pop(key, None)
        sidecar.write_text(json.dumps(data))
        get_registry().refresh()
        return tmp_path / "hostile"

    @pytest.mark.parametrize(
        ("change", "says"),
        [
            ("[1, 2]", "holds a JSON list, not a PEFT adapter configuration"),
            ({"r": "x"}, "is not a PEFT configuration it reads"),
            ({"target_modules": 5}, "is not a PEFT configuration it reads"),
        ],
    )
    def test_a_bad_adapter_config_is_an_adapter_error(self, hostile, change, says):
        config = hostile / "adapter_config.json"
        if isinstance(change, str):
            config.write_text(change)
        else:
            config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
        with pytest.raises(AdapterError, match=says):
            torchbridge.load_model("local/hostile")

    def test_a_pickled_adapter_is_read_safely(self, hostile, tmp_path):
        """adapter_model.bin is read by torchbridge's loader before peft: a pickle that would
        run code is an UnsafeCheckpointError (and does not run), a damaged one corrupt."""
        (hostile / "adapter_model.safetensors").unlink()
        marker = tmp_path / "ran"
        torch.save({"x": _ShellPayload(marker)}, hostile / "adapter_model.bin")
        with pytest.raises(UnsafeCheckpointError):
            torchbridge.load_model("local/hostile")
        assert not marker.exists()
        (hostile / "adapter_model.bin").write_bytes(b"\x00garbage" * 10)
        with pytest.raises(CorruptWeightsError):
            torchbridge.load_model("local/hostile")


def _cache_dir(repo: str) -> Path:
    """The folder of ``repo`` in the Hugging Face cache the tests point at."""
    return Path(os.environ["HF_HUB_CACHE"]) / ("models--" + repo.replace("/", "--"))


class TestErrors:
    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ({"rank": 4}, "unknown setting 'rank'"),
            ({"r": 0}, "positive integer"),
            ({"dropout": 1.5}, r"\[0, 1\)"),
            ({"alpha": 8, "lora_alpha": 8}, "both given"),
            ({"target": ["no_such_layer"]}, "q_proj"),  # the names the model has
            ("r=8", "as a dict"),
        ],
    )
    def test_bad_settings(self, finetune_models, spec, message):
        """A bad LoRA setting is an AdapterError that says what is accepted."""
        with pytest.raises(AdapterError, match=message):
            torchbridge.load_model(LLAMA, pretrained=True, lora=spec)

    def test_a_module_without_known_targets_must_name_them(self):
        """Outside transformers PEFT has no default targets: the error lists the layers."""
        module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        with pytest.raises(AdapterError, match=r"target=\[\.\.\.\].*called: 0, 2"):
            torchbridge.add_lora(module)

    def test_an_adapter_needs_a_base_with_weights(self, finetune_models, tmp_path):
        """Registering refuses an adapter on random weights, or on a base it cannot name."""
        random_base = torchbridge.load_model(LLAMA, lora=SPEC)
        with pytest.raises(AdapterError, match="without weights"):
            torchbridge.register_local_model("x", random_base, directory=tmp_path)
        torch.manual_seed(0)
        unnamed = torchbridge.add_lora(torch.nn.Sequential(torch.nn.Linear(3, 4)), target=["0"])
        with pytest.raises(AdapterError, match="architecture="):
            torchbridge.register_local_model("y", unnamed, directory=tmp_path)
        assert not list(tmp_path.iterdir())  # nothing written

    @pytest.mark.parametrize("name", ["../escape", "a" * 201, "-dash"])
    def test_save_local_adapter_checks_its_name(self, finetune_models, tmp_path, name):
        """save_local_adapter refuses what is not a local model's name as register_local_model
        does (InvalidModelIdError, at most 200 characters), writing nothing."""
        model = torchbridge.load_model(LLAMA, pretrained=True, lora=SPEC)
        with pytest.raises(InvalidModelIdError, match="not a local model name"):
            save_local_adapter(name, model, base=base_of(model), directory=tmp_path / "models")
        assert not list(tmp_path.iterdir())

    def test_base_arguments_that_are_not_json_write_nothing(self, finetune_models, tmp_path):
        """The base's arguments go to the sidecar: a value JSON cannot hold is a
        SidecarValueError (a TypeError), before any file is written."""
        model = torchbridge.load_model(LLAMA, pretrained=True, lora=SPEC)
        with pytest.raises(SidecarValueError, match="JSON values") as info:
            torchbridge.register_local_model(
                "z",
                model,
                architecture=LLAMA,
                kwargs={"pretrained": True, "when": object()},
                directory=tmp_path,
            )
        assert isinstance(info.value, TypeError)
        assert not list(tmp_path.iterdir())
