"""Trust: code from a model's files runs only when the caller said so (NOTE [trust]).

Each repository here leaves a marker file when its code runs, so every test
checks what ran, not only what was raised.
"""

from __future__ import annotations

import io
import json
import sys
import textwrap

import numpy as np
import pytest
import torch

import torchbridge
from julia_arrays import ArrayValue
from torchbridge import julia_support as jl
from torchbridge import memory
from torchbridge.errors import RemoteCodeError, UntrustedRepoError
from torchbridge.registry.core import get_registry
from torchbridge.registry.sources import hub_source

# -- torch.hub repositories ----------------------------------------------------------

MARKED_HUBCONF = """
import torch

open({marker!r}, "a").write("imported\\n")


def conv_net(pretrained=False, num_classes=10):
    \"\"\"A small convolutional classifier.\"\"\"
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, num_classes),
    )
"""


def _marked_repo(folder, marker):
    folder.mkdir(parents=True)
    (folder / "hubconf.py").write_text(textwrap.dedent(MARKED_HUBCONF.format(marker=str(marker))))
    return folder


@pytest.fixture
def hub(tmp_path, isolated_caches, monkeypatch):
    """An empty set of added repos, no trusted list, and a marker path for repository code."""
    monkeypatch.setattr(hub_source, "_ADDED", {})
    monkeypatch.delenv("TORCHBRIDGE_TRUSTED_REPOS", raising=False)
    monkeypatch.delenv("TORCHBRIDGE_HUB_REPOS", raising=False)
    get_registry().refresh()
    marker = tmp_path / "ran.txt"
    yield {"tmp": tmp_path, "marker": marker, "hub_dir": isolated_caches / "torch" / "hub"}
    get_registry().refresh()


def _ran(marker) -> bool:
    return marker.exists()


class TestHubRepositories:
    def test_load_is_refused_without_trust_and_nothing_runs(self, hub):
        """An added repository is not imported to load its model without trust_repo=True; the
        error names the switch and the trusted list, and the ledger is at its baseline."""
        from torchbridge.registry import add_hub_repo

        add_hub_repo(_marked_repo(hub["tmp"] / "marked", hub["marker"]))
        with memory.expect_baseline():
            with pytest.raises(UntrustedRepoError) as info:
                torchbridge.load_model("hub/marked/conv_net")
            with pytest.raises(RemoteCodeError, match="trust_repo=True"):
                torchbridge.load_model("hub/marked/conv_net", num_classes=3)
        assert "TORCHBRIDGE_TRUSTED_REPOS" in str(info.value)
        assert "hubconf.py" in str(info.value)
        assert not _ran(hub["marker"])

    def test_trust_repo_is_per_call(self, hub):
        """trust_repo=True imports the repository and builds the model; the next load without
        it is refused again."""
        from torchbridge.registry import add_hub_repo

        add_hub_repo(_marked_repo(hub["tmp"] / "marked", hub["marker"]))
        model = torchbridge.load_model("hub/marked/conv_net", num_classes=4, trust_repo=True)
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)
        assert _ran(hub["marker"])
        with pytest.raises(UntrustedRepoError):
            torchbridge.load_model("hub/marked/conv_net")

    def test_lora_trains_the_new_head_of_a_trusted_load(self, hub):
        """A LoRA adapter on a hub model loaded with trust_repo=True trains its classifier
        beside the adapter (NOTE [adapters]): the new random 4-class head gets gradients."""
        pytest.importorskip("peft")
        from torchbridge.registry import add_hub_repo

        add_hub_repo(_marked_repo(hub["tmp"] / "marked", hub["marker"]))
        model = torchbridge.load_model(
            "hub/marked/conv_net", num_classes=4, trust_repo=True, lora={"r": 2, "target": ["0"]}
        )
        trained = {
            n.removeprefix("base_model.model.")
            for n, p in model.named_parameters()
            if p.requires_grad
        }
        assert trained == {
            "0.lora_A.default.weight",
            "0.lora_B.default.weight",
            "4.modules_to_save.default.weight",
            "4.modules_to_save.default.bias",
        }
        model(torch.randn(2, 3, 8, 8)).square().sum().backward()
        head = model.get_submodule("base_model.model.4.modules_to_save.default")
        assert head.out_features == 4 and head.weight.grad.abs().sum() > 0

    def test_add_hub_repo_with_trust(self, hub):
        """add_hub_repo(..., trust_repo=True) trusts that folder for this process; adding it
        again without the flag takes the trust back."""
        from torchbridge.registry import add_hub_repo

        folder = _marked_repo(hub["tmp"] / "marked", hub["marker"])
        add_hub_repo(folder, trust_repo=True)
        assert torchbridge.load_model("hub/marked/conv_net")(torch.randn(1, 3, 8, 8)).shape == (
            1,
            10,
        )
        add_hub_repo(folder)
        with pytest.raises(UntrustedRepoError):
            torchbridge.load_model("hub/marked/conv_net")

    def test_trusted_list_by_name(self, hub, monkeypatch):
        """A name in $TORCHBRIDGE_TRUSTED_REPOS (as ids spell it) trusts that repository only."""
        from torchbridge.registry import add_hub_repo

        add_hub_repo(_marked_repo(hub["tmp"] / "marked", hub["marker"]))
        add_hub_repo(_marked_repo(hub["tmp"] / "other", hub["tmp"] / "other.txt"))
        monkeypatch.setenv("TORCHBRIDGE_TRUSTED_REPOS", "somebody/else, marked")
        assert torchbridge.load_model("hub/marked/conv_net") is not None
        with pytest.raises(UntrustedRepoError, match="hub/other/conv_net"):
            torchbridge.load_model("hub/other/conv_net")
        assert not (hub["tmp"] / "other.txt").exists()

    @pytest.mark.parametrize(
        ("listed", "trusted"),
        [
            ("someone/marked", True),
            ("someone/*", True),
            ("SomeOne/Marked", True),
            ("someone/mark", False),
            ("other/*", False),
            ("", False),
        ],
    )
    def test_trusted_list_by_github_name(self, hub, monkeypatch, listed, trusted):
        """`owner/repo` and `owner/*` match repositories torch.hub downloaded
        (`<owner>_<repo>_<ref>` in its cache), without regard to case."""
        _marked_repo(hub["hub_dir"] / "someone_marked_main", hub["marker"])
        monkeypatch.setenv("TORCHBRIDGE_TRUSTED_REPOS", listed)
        if trusted:
            assert torchbridge.load_model("hub/someone_marked_main/conv_net") is not None
            assert _ran(hub["marker"])
        else:
            with pytest.raises(UntrustedRepoError, match="'someone/<repo>'"):
                torchbridge.load_model("hub/someone_marked_main/conv_net")
            assert not _ran(hub["marker"])

    def test_pytorch_repositories_are_trusted_by_default_in_the_hub_cache_only(
        self, hub, monkeypatch
    ):
        """pytorch/* (e.g. torchvision's own hubconf) is trusted where torch.hub downloaded
        it; a folder of the same name elsewhere is not."""
        _marked_repo(hub["hub_dir"] / "pytorch_vision_main", hub["marker"])
        elsewhere = _marked_repo(hub["tmp"] / "repos" / "pytorch_vision_v2", hub["tmp"] / "x.txt")
        monkeypatch.setenv("TORCHBRIDGE_HUB_REPOS", str(elsewhere))
        assert torchbridge.load_model("hub/pytorch_vision_main/conv_net") is not None
        assert _ran(hub["marker"])
        with pytest.raises(UntrustedRepoError):
            torchbridge.load_model("hub/pytorch_vision_v2/conv_net")
        assert not (hub["tmp"] / "x.txt").exists()

    def test_local_model_built_from_a_hub_entry_needs_the_same_trust(self, hub, caplog):
        """local/x whose architecture is a hub entry loads only with trust_repo=True, and then
        holds the saved weights. Registering it imports nothing untrusted, and the debug log
        says why its head size was not checked."""
        from torchbridge.registry import add_hub_repo

        add_hub_repo(_marked_repo(hub["tmp"] / "marked", hub["marker"]))
        tuned = torchbridge.load_model("hub/marked/conv_net", num_classes=5, trust_repo=True)
        hub["marker"].unlink()
        with caplog.at_level("DEBUG", logger="torchbridge.registry"):
            torchbridge.register_local_model("tuned", tuned, architecture="hub/marked/conv_net")
        assert not _ran(hub["marker"])  # registering imports nothing untrusted
        assert any(
            "head size of hub/marked/conv_net is not checked (UntrustedRepoError" in r.message
            for r in caplog.records
        )
        with memory.expect_baseline(), pytest.raises(UntrustedRepoError, match="trust_repo"):
            torchbridge.load_model("local/tuned")
        assert not _ran(hub["marker"])
        model = torchbridge.load_model("local/tuned", trust_repo=True)
        x = torch.randn(2, 3, 8, 8)
        assert torch.equal(model.eval()(x), tuned.eval()(x))

    def test_trust_remote_code_is_no_trust_repo(self, hub):
        """trust_remote_code=True on a hub model is refused, naming trust_repo, before its
        repository is imported (by load_model and by export_onnx); on a timm model it is
        refused too, not a TypeError from timm; False asks nothing and loads."""
        from torchbridge.errors import RegistryArgumentError
        from torchbridge.registry import add_hub_repo

        add_hub_repo(_marked_repo(hub["tmp"] / "marked", hub["marker"]))
        with memory.expect_baseline():
            with pytest.raises(RegistryArgumentError, match="trust_repo=True"):
                torchbridge.load_model("hub/marked/conv_net", trust_remote_code=True)
            with pytest.raises(RegistryArgumentError, match="leave it out"):
                torchbridge.load_model("timm/test_resnet", trust_remote_code=True)
            out = hub["tmp"] / "hub.onnx"
            with pytest.raises(RegistryArgumentError, match="trust_repo=True"):
                torchbridge.export_onnx("hub/marked/conv_net", out, trust_remote_code=True)
        assert not _ran(hub["marker"]) and not out.exists()
        model = torchbridge.load_model("timm/test_resnet", trust_remote_code=False)
        assert isinstance(model, torch.nn.Module)

    def test_export_takes_the_same_switch(self, hub, capsys):
        """export_onnx and `torchbridge export` of a hub model import its repository only with
        trust_repo (--trust-repo), and then export the weights given with their head; the
        refusal names the switch and runs nothing."""
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
        from torchbridge.cli import main
        from torchbridge.registry import add_hub_repo

        add_hub_repo(_marked_repo(hub["tmp"] / "marked", hub["marker"]))
        tuned = torchbridge.load_model("hub/marked/conv_net", num_classes=5, trust_repo=True)
        weights = hub["tmp"] / "tuned.pth"
        torch.save(tuned.state_dict(), weights)
        hub["marker"].unlink()
        out = hub["tmp"] / "conv.onnx"
        export = dict(input_size=(3, 8, 8), weights=str(weights), num_classes=5)
        with memory.expect_baseline():
            with pytest.raises(UntrustedRepoError, match="export_onnx"):
                torchbridge.export_onnx("hub/marked/conv_net", out, **export)
        assert not _ran(hub["marker"]) and not out.exists()
        args = ["export", "hub/marked/conv_net", "-o", str(out), "--input-size", "3,8,8"]
        args += ["--weights", str(weights), "--num-classes", "5"]
        assert main(args) == 1
        assert "--trust-repo" in capsys.readouterr().err
        assert not _ran(hub["marker"]) and not out.exists()
        report = torchbridge.export_onnx("hub/marked/conv_net", out, trust_repo=True, **export)
        assert report.max_abs_diff is not None and report.outputs[0].shape[-1] == 5
        assert main([*args, "--trust-repo", "-o", str(hub["tmp"] / "cli.onnx")]) == 0

    def test_fit_checkpoint_of_a_hub_model_imports_nothing_more(self, hub):
        """fit with a Checkpoint naming a hub architecture and its num_classes checks the head
        on the model it trains (the trusted load built it), not by importing the repository
        again, and a wrong num_classes is still refused before training."""
        from torchbridge.errors import TrainingError
        from torchbridge.registry import add_hub_repo
        from torchbridge.train import Checkpoint, fit

        add_hub_repo(_marked_repo(hub["tmp"] / "marked", hub["marker"]))
        model = torchbridge.load_model("hub/marked/conv_net", num_classes=5, trust_repo=True)
        batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,)))]
        common = dict(epochs=1, optimizer={"rule": "Adam"}, loss="logitcrossentropy")
        arch = "hub/marked/conv_net"
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(TrainingError, match="has 5 outputs"):
            fit(
                model,
                batches,
                checkpoint=Checkpoint("bad", architecture=arch, num_classes=3),
                progress=False,
                **common,
            )
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        history = fit(
            model,
            batches,
            checkpoint=Checkpoint("tuned", architecture=arch, num_classes=5, save="last"),
            progress=False,
            **common,
        )
        assert history.checkpoint.num_classes == 5
        x = torch.randn(2, 3, 8, 8)
        again = torchbridge.load_model("local/tuned", trust_repo=True)
        assert torch.equal(again.eval()(x), model.eval()(x))

    @pytest.mark.parametrize("trust", ["none", "added", "listed"])
    def test_information_never_imports_a_repository(self, hub, monkeypatch, capsys, trust):
        """list, search, model_info, feature_channels, `torchbridge info` and the Julia rows of
        a hub entry, and of a local model built from one, import no repository, trusted or
        not; their feature channels are unknown (None)."""
        from torchbridge.cli import main
        from torchbridge.registry import add_hub_repo

        folder = _marked_repo(hub["tmp"] / "marked", hub["marker"])
        add_hub_repo(folder, trust_repo=trust == "added")
        if trust == "listed":
            monkeypatch.setenv("TORCHBRIDGE_TRUSTED_REPOS", "marked")
        _local_sidecar(hub["tmp"], "hub/marked/conv_net")
        assert {"hub/marked/conv_net", "local/fromhub"} <= {e.id for e in torchbridge.list_models()}
        assert torchbridge.search_models("small convolutional classifier")[0].id == (
            "hub/marked/conv_net"
        )
        for model_id in ("hub/marked/conv_net", "local/fromhub"):
            assert torchbridge.model_info(model_id).id == model_id
            assert torchbridge.feature_channels(model_id) is None
            assert jl.info_row(model_id)["feature_channels"] is None
            assert main(["info", model_id, "--json"]) == 0
            assert json.loads(capsys.readouterr().out)["feature_channels"] is None
        jl.registry_rows(source="hub")
        jl.search_rows("conv net")
        assert not _ran(hub["marker"])


def _local_sidecar(tmp_path, architecture):
    """A local model dropped in by hand (no code runs to write it): weights and sidecar."""
    from safetensors.torch import save_file

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 10),
    )
    models = tmp_path / "torchbridge" / "models"
    models.mkdir(parents=True, exist_ok=True)
    save_file(net.state_dict(), str(models / "fromhub.safetensors"))
    sidecar = {
        "architecture": architecture,
        "weights": "fromhub.safetensors",
        "task": "image-classification",
        "input_size": [3, 8, 8],
    }
    (models / "fromhub.json").write_text(json.dumps(sidecar))


# -- Hugging Face repositories: models and tokenizers --------------------------------

CUSTOM_CODE = """
open({marker!r}, "a").write("imported\\n")

from transformers import GPT2Config, PreTrainedTokenizerFast


class CustomConfig(GPT2Config):
    model_type = "tbcustom"


class CustomTokenizerFast(PreTrainedTokenizerFast):
    pass
"""


@pytest.fixture
def custom_repo(tmp_path, monkeypatch, hf_modules):
    """A cached repo test/custom (a tiny GPT-2 with its tokenizer) carrying a module of its
    own, custom_code.py, that leaves a marker when it is imported."""
    from hf_models import cache_repo, make_gpt2

    make_gpt2(tmp_path / "work" / "gpt2")
    snap = cache_repo(tmp_path / "hub", "test/custom", tmp_path / "work" / "gpt2")
    marker = tmp_path / "ran.txt"
    (snap / "custom_code.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("TORCHBRIDGE_HF_DIRS", raising=False)
    get_registry().refresh()
    yield {"snap": snap, "marker": marker}
    get_registry().refresh()


def _set_json(path, **fields):
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def _needs_custom_config(snap):
    # a model type transformers does not know, whose config class is the repo's code
    _set_json(
        snap / "config.json",
        model_type="tbcustom",
        auto_map={"AutoConfig": "custom_code.CustomConfig"},
    )


class TestTokenizers:
    def test_config_auto_map_is_refused_even_with_y_on_stdin(self, custom_repo, monkeypatch):
        """A config.json with an auto_map: load_tokenizer refuses with RemoteCodeError naming
        the file and the switch, never asks, and runs nothing whatever stdin holds."""
        _needs_custom_config(custom_repo["snap"])
        monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\ny\n"))
        with pytest.raises(RemoteCodeError, match="trust_remote_code=True") as info:
            torchbridge.load_tokenizer("hf/test/custom")
        assert "custom_code.py" in str(info.value) and "config.json" in str(info.value)
        assert not custom_repo["marker"].exists()
        assert sys.stdin.read() == "y\ny\ny\n"  # nothing was read from it

    def test_tokenizer_config_auto_map_is_refused(self, custom_repo, monkeypatch):
        """An auto_map in tokenizer_config.json alone is refused the same way."""
        _set_json(
            custom_repo["snap"] / "tokenizer_config.json",
            auto_map={"AutoTokenizer": [None, "custom_code.CustomTokenizerFast"]},
        )
        monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
        with pytest.raises(RemoteCodeError, match="tokenizer_config.json"):
            torchbridge.load_tokenizer("hf/test/custom")
        assert not custom_repo["marker"].exists()

    def test_trust_remote_code_runs_it(self, custom_repo, monkeypatch):
        """With trust_remote_code=True the repository's code runs and the tokenizer loads; a
        later call without it is refused again (the cache does not carry the trust)."""
        _needs_custom_config(custom_repo["snap"])
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # a prompt would fail: none comes
        tok = torchbridge.load_tokenizer("hf/test/custom", trust_remote_code=True)
        assert tok("good movie")["input_ids"] and custom_repo["marker"].exists()
        with pytest.raises(RemoteCodeError):
            torchbridge.load_tokenizer("hf/test/custom")

    def test_julia_tokenize_and_decode_take_the_switch(self, custom_repo, monkeypatch):
        """The calls TorchBridge.jl makes refuse without trust_remote_code (the ledger at its
        baseline) and forward it when given."""
        _needs_custom_config(custom_repo["snap"])
        monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
        ids = ArrayValue(np.asfortranarray(np.array([[1, 2, 3]], dtype=np.int64).T))
        with memory.expect_baseline():
            with pytest.raises(RemoteCodeError):
                jl.tokenize("hf/test/custom", ["good movie"])
            with pytest.raises(RemoteCodeError):
                jl.decode("hf/test/custom", ids)
            with pytest.raises(RemoteCodeError):
                jl.vocab_size("hf/test/custom")
        assert not custom_repo["marker"].exists()
        encoded = jl.tokenize("hf/test/custom", ["good movie"], trust_remote_code=True)
        assert encoded["input_ids"].shape[1] == 1
        texts = jl.decode("hf/test/custom", ids, trust_remote_code=True)
        assert isinstance(texts, list) and len(texts) == 1

    @pytest.mark.parametrize("auto_map", [5, "custom_code.CustomConfig", {"AutoConfig": 5}, [3]])
    @pytest.mark.parametrize("trust", [False, True])
    def test_malformed_auto_map_is_a_remote_code_error(self, custom_repo, auto_map, trust):
        """An auto_map that is not a mapping of 'module.Class' references is refused as
        RemoteCodeError (not an AttributeError), for models and tokenizers, trusted or not."""
        _set_json(custom_repo["snap"] / "config.json", auto_map=auto_map)
        get_registry().refresh()
        with pytest.raises(RemoteCodeError, match="malformed"):
            torchbridge.load_model("hf/test/custom", pretrained=True, trust_remote_code=trust)
        with pytest.raises(RemoteCodeError, match="malformed"):
            torchbridge.load_tokenizer("hf/test/custom", trust_remote_code=trust)
        assert not custom_repo["marker"].exists()

    def test_register_local_model_reads_the_tokenizer_only_when_trusted(
        self, custom_classifier, tmp_path
    ):
        """Saving a model whose architecture has its own code saves the architecture's tokenizer
        with trust_remote_code=True; without it the refusal names register_local_model and
        nothing is written (no model saved without its tokenizer)."""
        from hf_models import bert_tokenizer, custom_classifier_output

        model = torchbridge.load_model(
            "hf/test/custom-classifier", pretrained=True, trust_remote_code=True
        )
        folder = tmp_path / "models"
        with pytest.raises(RemoteCodeError, match="trust_remote_code=True to register_local_model"):
            torchbridge.register_local_model(
                "custom-saved", model, architecture="hf/test/custom-classifier", directory=folder
            )
        assert not folder.exists() or not list(folder.iterdir())
        torchbridge.register_local_model(
            "custom-saved",
            model,
            architecture="hf/test/custom-classifier",
            directory=folder,
            trust_remote_code=True,
        )
        tok = torchbridge.load_tokenizer("local/custom-saved", trust_remote_code=True)
        assert tok.get_vocab() == bert_tokenizer(tmp_path / "vocab").get_vocab()
        again = torchbridge.load_model("local/custom-saved", trust_remote_code=True)
        x = torch.randn(2, 4)
        torch.testing.assert_close(again(x), custom_classifier_output(custom_classifier, x))

    def test_model_refusal_names_the_file(self, custom_repo):
        """load_model of a model with custom code names the module and the switch."""
        _needs_custom_config(custom_repo["snap"])
        get_registry().refresh()
        with memory.expect_baseline(), pytest.raises(RemoteCodeError) as info:
            torchbridge.load_model("hf/test/custom", pretrained=True)
        assert "custom_code.py" in str(info.value)
        assert "trust_remote_code=True to load_model" in str(info.value)
        assert not custom_repo["marker"].exists()
