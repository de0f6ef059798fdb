"""The hf source: tiny random BERT, GPT-2 and ViT laid out as a Hugging Face cache,
and one tiny model per architecture of tests/hf_models.py's TINY_CONFIGS in
``save_pretrained`` folders.

Nothing is downloaded: tests/hf_models.py builds each model from a config and
writes its tokenizer's vocabulary.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import torchbridge  # noqa: E402
from hf_models import (  # noqa: E402
    TINY_CONFIGS,
    cache_repo,
    custom_classifier_output,
    make_bert,
    make_tiny,
    tiny_cache,
)
from julia_arrays import ArrayValue  # noqa: E402
from torchbridge import julia_support as jl  # noqa: E402
from torchbridge import memory  # noqa: E402
from torchbridge.errors import (  # noqa: E402
    CorruptWeightsError,
    MaskShapeError,
    RemoteCodeError,
    TokenIdError,
    TokenizerNotFoundError,
    TrainingError,
    UnknownArchitectureError,
    UnknownModelError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from torchbridge.registry.core import get_registry  # noqa: E402

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """The cache, with HF_HUB_CACHE pointing at it for the module's tests."""
    root = tmp_path_factory.mktemp("hf")
    made = tiny_cache(root / "hub", root / "work")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(root / "hub"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TORCHBRIDGE_OFFLINE", "1")
        mp.delenv("TORCHBRIDGE_HF_DIRS", raising=False)
        get_registry().refresh()
        yield {"root": root, "hub": root / "hub", "made": made}
    get_registry().refresh()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """One save_pretrained folder per architecture of TINY_CONFIGS, named after it."""
    root = tmp_path_factory.mktemp("tiny")
    return {"root": root, "made": {arch: make_tiny(arch, root / arch) for arch in TINY_CONFIGS}}


@pytest.fixture
def tiny(hf_cache, tiny_dir, monkeypatch):
    """The tiny architectures, listed as hf/<architecture> through TORCHBRIDGE_HF_DIRS."""
    monkeypatch.setenv("TORCHBRIDGE_HF_DIRS", str(tiny_dir["root"]))
    return tiny_dir["made"]


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class TestListing:
    def test_entries_from_config(self, hf_cache):
        """Each cached repo is listed with its task, labels, sizes and the card's license."""
        entries = {e.id: e for e in torchbridge.list_models(source="hf")}
        assert set(entries) == {"hf/test/tiny-bert", "hf/test/tiny-gpt2", "hf/test/tiny-vit"}
        bert = entries["hf/test/tiny-bert"]
        assert bert.task == "sequence-classification" and bert.num_classes == 3
        assert bert.license == "apache-2.0" and bert.weights.cached
        assert bert.metadata["architecture"] == "BertForSequenceClassification"
        assert bert.metadata["model_type"] == "bert"
        assert bert.metadata["labels"] == ["LABEL_0", "LABEL_1", "LABEL_2"]
        assert bert.metadata["max_length"] == 64 and bert.metadata["hidden_size"] == 32
        assert bert.metadata["vocab_size"] == 44
        gpt2 = entries["hf/test/tiny-gpt2"]
        assert gpt2.task == "causal-lm" and gpt2.num_classes is None
        vit = entries["hf/test/tiny-vit"]
        assert vit.task == "image-classification" and vit.input_size == (3, 32, 32)
        assert vit.julia_input_size == (32, 32, 3) and vit.mean == (0.5, 0.5, 0.5)

    def test_search_and_info(self, hf_cache):
        """Search ranks hf models with the rest; model_info reads one repo."""
        found = [e.id for e in torchbridge.search_models("tiny bert", limit=3)]
        assert found[0] == "hf/test/tiny-bert"
        assert torchbridge.model_info("hf/test/tiny-gpt2").task == "causal-lm"
        assert torchbridge.list_models("hf/*gpt2*")[0].id == "hf/test/tiny-gpt2"

    def test_save_pretrained_folders(self, hf_cache, tmp_path, monkeypatch):
        """Folders named in TORCHBRIDGE_HF_DIRS are listed by their name, and load."""
        make_bert(tmp_path / "mine" / "my-bert", num_labels=2)
        monkeypatch.setenv("TORCHBRIDGE_HF_DIRS", str(tmp_path / "mine"))
        entry = torchbridge.model_info("hf/my-bert")
        assert entry.num_classes == 2 and entry.weights.location == str(
            tmp_path / "mine" / "my-bert"
        )
        assert "hf/my-bert" in {e.id for e in torchbridge.list_models(source="hf")}
        model = torchbridge.load_model("hf/my-bert", pretrained=True)
        assert model.config.num_labels == 2


class TestLoading:
    def test_pretrained_is_the_saved_model(self, hf_cache):
        """pretrained=True loads every saved tensor; the forward equals the saved model's."""
        ref = hf_cache["made"]["test/tiny-bert"][0].eval()
        model = torchbridge.load_model("hf/test/tiny-bert", pretrained=True)
        assert type(model).__name__ == "BertForSequenceClassification"
        assert same_state(model, ref)
        ids = torch.randint(0, 44, (2, 7))
        torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits)

    def test_new_head_keeps_the_body(self, hf_cache, caplog):
        """num_labels replaces the head (logged), the body loads, the config follows."""
        ref = hf_cache["made"]["test/tiny-bert"][0]
        with caplog.at_level(logging.INFO, logger="torchbridge.registry"):
            model = torchbridge.load_model("hf/test/tiny-bert", pretrained=True, num_labels=5)
        assert model.classifier.out_features == 5 and model.config.num_labels == 5
        assert len(model.config.id2label) == 5
        assert "classifier.weight" in caplog.text and "3-class head" in caplog.text
        body = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier")}
        assert all(torch.equal(v, ref.state_dict()[k]) for k, v in body.items())
        same = torchbridge.load_model("hf/test/tiny-bert", pretrained=True, num_classes=3)
        assert same_state(same, ref)
        with pytest.raises(ValueError, match="disagree"):
            torchbridge.load_model("hf/test/tiny-bert", num_labels=2, num_classes=3)
        with pytest.raises(torchbridge.RegistryError, match="applies to a classifier"):
            torchbridge.load_model("hf/test/tiny-gpt2", num_labels=2)

    def test_untrained_and_by_task(self, hf_cache):
        """Without weights the model is built from the config; task= picks an Auto class."""
        model = torchbridge.load_model("hf/test/tiny-bert", num_labels=4, hidden_act="relu")
        assert model.classifier.out_features == 4 and model.config.hidden_act == "relu"
        body = torchbridge.load_model(
            "hf/test/tiny-bert", pretrained=True, task="feature-extraction"
        )
        assert type(body).__name__ == "BertModel"
        ref = hf_cache["made"]["test/tiny-bert"][0]
        assert torch.equal(
            body.embeddings.word_embeddings.weight, ref.bert.embeddings.word_embeddings.weight
        )
        vit = torchbridge.load_model("hf/test/tiny-vit", pretrained=True, num_classes=2)
        assert vit.classifier.out_features == 2
        assert vit(pixel_values=torch.randn(1, 3, 32, 32)).logits.shape == (1, 2)

    def test_weights_file(self, hf_cache, tmp_path):
        """weights=FILE builds from the config and loads the file safely (pickles too)."""
        ref = hf_cache["made"]["test/tiny-gpt2"][0]
        torch.save(ref.state_dict(), tmp_path / "w.pt")
        model = torchbridge.load_model("hf/test/tiny-gpt2", weights=tmp_path / "w.pt")
        assert same_state(model, ref)

    def test_tokenizer(self, hf_cache):
        """load_tokenizer gives the model's fast tokenizer, once per folder."""
        tok = torchbridge.load_tokenizer("hf/test/tiny-bert")
        assert tok.is_fast and len(tok) == 44
        assert tok is torchbridge.load_tokenizer("hf/test/tiny-bert")
        made = hf_cache["made"]["test/tiny-bert"][1]
        assert tok("the movie was great")["input_ids"] == made("the movie was great")["input_ids"]
        with pytest.raises(TokenizerNotFoundError, match="no tokenizer files"):
            torchbridge.load_tokenizer("hf/test/tiny-vit")


class TestBadInput:
    def test_not_cached_offline(self, hf_cache):
        """An id not in the cache, offline: WeightsNotFoundError naming the cache path, at once."""
        with memory.expect_baseline():
            start = time.perf_counter()
            with pytest.raises(WeightsNotFoundError) as err:
                torchbridge.load_model("hf/nobody/nothing", pretrained=True)
            assert time.perf_counter() - start < 1.0
        assert str(hf_cache["hub"] / "models--nobody--nothing") in str(err.value)
        with pytest.raises(UnknownModelError):
            torchbridge.model_info("hf/not a repo")

    def _variant(self, hf_cache, repo, edit):
        snap = next((hf_cache["hub"] / "models--test--tiny-bert" / "snapshots").iterdir())
        folder = hf_cache["root"] / "variants" / repo
        shutil.copytree(snap, folder, dirs_exist_ok=True)
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
        cache_repo(hf_cache["hub"], repo, folder)
        return f"hf/{repo}"

    def test_unknown_architecture(self, hf_cache):
        """An architecture (or model_type) transformers lacks is named with its version."""
        import transformers

        arch = self._variant(
            hf_cache,
            "test/future-arch",
            lambda c: c.update(architectures=["FutureBertForSequenceClassification"]),
        )
        kind = self._variant(
            hf_cache, "test/future-type", lambda c: c.update(model_type="futurebert")
        )
        with memory.expect_baseline():
            with pytest.raises(UnknownArchitectureError) as err:
                torchbridge.load_model(arch, pretrained=True)
            assert "FutureBertForSequenceClassification" in str(err.value)
            assert transformers.__version__ in str(err.value)
            with pytest.raises(UnknownArchitectureError, match="futurebert"):
                torchbridge.load_model(kind, pretrained=True)
        # a body of a known model_type still loads with task=
        assert torchbridge.load_model(arch, pretrained=True, task="sequence-classification")

    def test_custom_code_needs_trust(self, hf_cache):
        """A config with auto_map is refused without trust_remote_code=True, naming the files."""
        repo = self._variant(
            hf_cache,
            "test/custom",
            lambda c: c.update(auto_map={"AutoModel": "modeling_custom.CustomModel"}),
        )
        assert torchbridge.model_info(repo).metadata["custom_code"]
        with memory.expect_baseline(), pytest.raises(RemoteCodeError, match="modeling_custom.py"):
            torchbridge.load_model(repo, pretrained=True)

    def test_custom_code_loads_when_trusted(self, hf_cache, tmp_path, hf_modules):
        """With trust_remote_code=True a repository's own model class runs, offline, from the cache."""
        import textwrap

        from safetensors.torch import save_file

        folder = tmp_path / "custom"
        folder.mkdir()
        (folder / "configuration_custom.py").write_text(
            textwrap.dedent(
                """
                from transformers import PretrainedConfig

                class CustomConfig(PretrainedConfig):
                    model_type = "custom-tiny"

                    def __init__(self, hidden=4, **kwargs):
                        self.hidden = hidden
                        super().__init__(**kwargs)
                """
            )
        )
        (folder / "modeling_custom.py").write_text(
            textwrap.dedent(
                """
                import torch
                from transformers import PreTrainedModel
                from .configuration_custom import CustomConfig

                class CustomModel(PreTrainedModel):
                    config_class = CustomConfig

                    def __init__(self, config):
                        super().__init__(config)
                        self.linear = torch.nn.Linear(config.hidden, 2)
                        self.post_init()

                    def forward(self, x):
                        return self.linear(x) * 2
                """
            )
        )
        auto_map = {
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModel": "modeling_custom.CustomModel",
        }
        config = {"model_type": "custom-tiny", "hidden": 4, "auto_map": auto_map}
        (folder / "config.json").write_text(json.dumps(config))
        weights = {"linear.weight": torch.randn(2, 4), "linear.bias": torch.randn(2)}
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        cache_repo(hf_cache["hub"], "test/custom-code", folder)
        get_registry().refresh()
        with pytest.raises(RemoteCodeError):
            torchbridge.load_model("hf/test/custom-code", pretrained=True)
        model = torchbridge.load_model(
            "hf/test/custom-code", pretrained=True, trust_remote_code=True
        )
        assert type(model).__name__ == "CustomModel"
        x = torch.randn(3, 4)
        want = (x @ weights["linear.weight"].T + weights["linear.bias"]) * 2
        torch.testing.assert_close(model(x), want)
        assert hf_modules.is_dir()  # the repository's code was copied there

    def test_custom_code_classifier_with_weights_or_num_labels(self, custom_classifier, tmp_path):
        """trust_remote_code=True reaches every step of a custom-code classifier's load: a
        weights= file is read into it (the head size the file holds), and num_labels gives it
        a new head on the published body."""
        from safetensors.torch import save_file

        torch.manual_seed(1)
        mine = {k: torch.randn_like(v) for k, v in custom_classifier.items()}
        mine["classifier.weight"], mine["classifier.bias"] = torch.randn(2, 4), torch.randn(2)
        save_file(mine, str(tmp_path / "mine.safetensors"))
        model = torchbridge.load_model(
            "hf/test/custom-classifier",
            weights=tmp_path / "mine.safetensors",
            trust_remote_code=True,
        )
        x = torch.randn(3, 4)
        torch.testing.assert_close(model(x), custom_classifier_output(mine, x))
        assert model.config.num_labels == 2
        model = torchbridge.load_model(
            "hf/test/custom-classifier", pretrained=True, trust_remote_code=True, num_labels=5
        )
        assert model.classifier.out_features == 5 and model.config.num_labels == 5
        assert torch.equal(model.body.weight, custom_classifier["body.weight"])
        with pytest.raises(RemoteCodeError, match="trust_remote_code=True"):
            torchbridge.load_model(
                "hf/test/custom-classifier", weights=tmp_path / "mine.safetensors"
            )

    def test_token_ids_and_masks(self, hf_cache):
        """Ids outside the vocabulary and masks of another shape fail before the model runs."""
        bm = torchbridge.bridge(torchbridge.load_model("hf/test/tiny-bert", pretrained=True))
        ids = torch.randint(0, 44, (2, 6))
        with memory.expect_baseline():
            with pytest.raises(TokenIdError, match="vocabulary of 44 tokens"):
                bm.forward(input_ids=ids + 44)
            with pytest.raises(MaskShapeError, match="attention_mask"):
                bm.forward(input_ids=ids, attention_mask=torch.ones(2, 5, dtype=torch.int64))
            with pytest.raises(MaskShapeError, match="token_type_ids"):
                bm.forward(ids, token_type_ids=torch.zeros(6, 2, dtype=torch.int64))
        bm.close()


class TestBridge:
    def test_forward_equals_direct_call(self, hf_cache):
        """The bridge's named outputs equal the model's own, for each tiny model."""
        for model_id, inputs in (
            (
                "hf/test/tiny-bert",
                {
                    "input_ids": torch.randint(0, 44, (2, 6)),
                    "attention_mask": torch.ones(2, 6, dtype=torch.int64),
                },
            ),
            ("hf/test/tiny-gpt2", {"input_ids": torch.randint(0, 94, (2, 6)), "use_cache": False}),
            ("hf/test/tiny-vit", {"pixel_values": torch.randn(2, 3, 32, 32)}),
        ):
            model = torchbridge.load_model(model_id, pretrained=True)
            want = model(**inputs)
            bm = torchbridge.bridge(model)
            outputs, pb = bm.forward(grad=False, **inputs)
            assert pb is None and bm.output_structure.names == ("logits",)
            torch.testing.assert_close(outputs[0], want.logits)
            assert type(bm.output_structure.rebuild(outputs)) is type(want)
            bm.close()

    def test_gradients_equal_autograd_in_float64(self, hf_cache):
        """Parameter and inputs_embeds gradients equal autograd's, in float64, with a loss output."""
        model = torchbridge.load_model("hf/test/tiny-bert", pretrained=True).double().train()
        ref = copy.deepcopy(model)
        emb = torch.randn(2, 6, 32, dtype=torch.float64)
        mask = torch.ones(2, 6, dtype=torch.int64)
        mask[1, 4:] = 0
        labels = torch.tensor([0, 2])
        bm = torchbridge.bridge(model)
        with memory.expect_baseline():
            outputs, pb = bm.forward(inputs_embeds=emb, attention_mask=mask, labels=labels)
            assert bm.output_structure.names == ("loss", "logits")
            g_emb, g_mask, g_labels = pb(loss=torch.tensor(1.0, dtype=torch.float64))
        x = emb.clone().requires_grad_(True)
        out = ref(inputs_embeds=x, attention_mask=mask, labels=labels)
        out.loss.backward()
        torch.testing.assert_close(outputs[0], out.loss.detach(), **TIGHT)
        torch.testing.assert_close(g_emb, x.grad, **TIGHT)
        assert g_mask is None and g_labels is None
        for name, g in zip(bm.param_names, bm.grads):
            want = ref.get_parameter(name).grad
            torch.testing.assert_close(g, torch.zeros_like(g) if want is None else want, **TIGHT)
        bm.close()

    def test_ledger_at_baseline_after_1000_steps(self, hf_cache):
        """1,000 forward/pullback steps on BERT, cotangent on logits only: nothing stays held."""
        bm = torchbridge.bridge(
            torchbridge.load_model("hf/test/tiny-bert", pretrained=True).train()
        )
        ids = torch.randint(0, 44, (2, 8))
        mask = torch.ones(2, 8, dtype=torch.int64)
        cot = torch.ones(2, 3)
        with memory.expect_baseline():
            for _ in range(1000):
                _, pb = bm.forward(input_ids=ids, attention_mask=mask)
                pb(logits=cot)
        bm.close()


class TestJuliaText:
    """julia_support.text, called as TorchBridge.jl calls it."""

    def test_tokenize_is_julia_ordered(self, hf_cache):
        """tokenize gives Int64 (seq, batch) column-major arrays; ids 0-based, as the tokenizer's."""
        texts = ["the movie was great", "bad plot"]
        got = jl.tokenize("hf/test/tiny-bert", texts)
        assert set(got) == {"input_ids", "attention_mask", "token_type_ids"}
        tok = torchbridge.load_tokenizer("hf/test/tiny-bert")
        want = tok(texts, padding=True, return_tensors="pt")
        for name, a in got.items():
            assert a.dtype == np.int64 and a.shape == (6, 2) and a.flags.f_contiguous
            np.testing.assert_array_equal(a, want[name].numpy().T)
        assert got["input_ids"][0, 0] == tok.cls_token_id  # 0-based: [CLS] is id 2
        assert jl.vocab_size("hf/test/tiny-bert") == 44
        assert jl.tokenize("hf/test/tiny-gpt2", "the end", padding=False)["input_ids"].shape == (
            2,
            1,
        )

    def test_forward_with_julia_keyword_inputs(self, hf_cache):
        """Julia arrays from tokenize, passed by keyword, give the model's own logits."""
        model = torchbridge.load_model("hf/test/tiny-bert", pretrained=True)
        toks = jl.tokenize("hf/test/tiny-bert", ["i love this film", "boring"])
        bm = torchbridge.bridge(model)
        kw = {k: ArrayValue(np.asfortranarray(v)) for k, v in toks.items()}
        outputs, pb, layouts = jl.forward(bm, grad=True, **kw)
        assert bm.output_structure.names == ("logits",)
        assert layouts[0][0] == (3, 2)  # Julia (labels, batch)
        want = model(**{k: torch.from_numpy(np.ascontiguousarray(v.T)) for k, v in toks.items()})
        torch.testing.assert_close(outputs[0], want.logits)
        grads, *_ = jl.pullback(pb, torch.ones(2, 3))
        assert grads == (None, None, None)
        bm.close()

    def test_decode_and_generate(self, hf_cache):
        """decode reads Julia (seq, batch) ids; generate extends them greedily, as torch's."""
        toks = jl.tokenize("hf/test/tiny-gpt2", ["the movie", "a book"])
        ids = ArrayValue(np.asfortranarray(toks["input_ids"]))
        assert jl.decode("hf/test/tiny-gpt2", ids) == [" the movie", " a book"]
        model = torchbridge.load_model("hf/test/tiny-gpt2", pretrained=True)
        out = jl.generate(model, ids, max_new_tokens=4)
        assert out.shape == (6, 2) and out.dtype == np.int64
        want = torchbridge.generate(
            model, torch.from_numpy(toks["input_ids"].T.copy()), max_new_tokens=4
        )
        np.testing.assert_array_equal(out, want.numpy().T)
        vec = ArrayValue(np.asfortranarray(toks["input_ids"][:, 0]))
        assert jl.generate(model, vec, max_new_tokens=2).shape == (4, 1)
        assert len(jl.decode("hf/test/tiny-gpt2", out, layout="julia")) == 2

    def test_torch_native_step_on_text_batches(self, hf_cache):
        """TorchBridge.jl's fit_torch! path: keyword inputs in a mapping, the loss on one output."""
        bm = torchbridge.bridge(torchbridge.load_model("hf/test/tiny-bert", pretrained=True))
        texts = ["i love this film", "boring", "great acting", "awful"]
        toks = jl.tokenize("hf/test/tiny-bert", texts)
        batch = {k: ArrayValue(np.asfortranarray(v)) for k, v in toks.items()}
        labels = np.zeros((3, 4), dtype=np.float32, order="F")  # Julia one-hot (labels, batch)
        labels[[0, 1, 0, 1], range(4)] = 1
        y = ArrayValue(labels)
        opt = jl.optimizer(bm, {"rule": "Adam", "eta": 1e-2})
        t = jl.trainer(opt, "logitcrossentropy", output="logits")
        losses = [jl.train_step(t, batch, y)[0] for _ in range(15)]
        assert losses[-1] < 0.5 * losses[0]
        _, _, layouts, _ = jl.train_step(t, batch, y)
        assert layouts[0][0] == (3, 4)  # the logits, Julia (labels, batch)
        # one output: no name needed; several: the loss must be told which
        assert jl.trainer(opt, "logitcrossentropy").step(batch, y)[1].shape == (4, 3)
        bm.module.config.output_hidden_states = True
        with pytest.raises(TrainingError, match="outputs.*logits.*hidden_states.*output = :logits"):
            jl.train_step(jl.trainer(opt, "logitcrossentropy"), batch, y)
        with pytest.raises(TrainingError, match="output='scores'.*no output 'scores'"):
            jl.train_step(jl.trainer(opt, "logitcrossentropy", output="scores"), batch, y)
        bad = dict(batch, input_ids=ArrayValue(np.full((6, 4), 999, dtype=np.int64, order="F")))
        with pytest.raises(TokenIdError):
            jl.train_step(t, bad, y)
        bm.close()


class TestTrainSaveExport:
    def test_fit_lowers_the_loss(self, hf_cache):
        """fit finetunes the BERT classifier on tokenized batches (dict inputs, ModelOutput)."""
        from torchbridge.train import fit

        model = torchbridge.load_model("hf/test/tiny-bert", pretrained=True, num_labels=2)
        tok = torchbridge.load_tokenizer("hf/test/tiny-bert")
        texts = ["i love this film", "great fun movie", "boring and bad", "terrible plot"] * 2
        labels = torch.tensor([1, 1, 0, 0] * 2)
        enc = dict(tok(texts, padding=True, return_tensors="pt"))
        batches = [(enc, labels)]
        history = fit(
            model,
            batches,
            batches,
            epochs=20,
            optimizer={"rule": "Adam", "eta": 1e-2},
            loss="logitcrossentropy",
            progress=False,
        )
        losses = [r["train_loss"] for r in history.epochs]
        assert losses[-1] < 0.5 * losses[0]

    def test_register_local_round_trip(self, hf_cache, tmp_path):
        """register_local_model writes save_pretrained's layout; local/<name> loads bit-equal."""
        model = torchbridge.load_model("hf/test/tiny-bert", pretrained=True, num_labels=2)
        with torch.no_grad():
            model.classifier.weight.add_(1.0)
        entry = torchbridge.register_local_model(
            "tiny-bert-sst", model, architecture="hf/test/tiny-bert", directory=tmp_path
        )
        folder = tmp_path / "tiny-bert-sst"
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
            p.name for p in folder.iterdir()
        }
        assert entry.id == "local/tiny-bert-sst" and entry.num_classes == 2
        assert entry.task == "sequence-classification"
        back = torchbridge.load_model("local/tiny-bert-sst")
        assert type(back) is type(model) and same_state(back, model)
        tok = torchbridge.load_tokenizer("local/tiny-bert-sst")
        assert len(tok) == 44
        with pytest.raises(torchbridge.DuplicateModelError):
            torchbridge.register_local_model(
                "tiny-bert-sst", model, architecture="hf/test/tiny-bert", directory=tmp_path
            )

    def test_onnx_export_of_a_vision_transformer(self, hf_cache, tmp_path):
        """A ViT exports from its config's image size, input pixel_values, verified in onnxruntime."""
        pytest.importorskip("onnxruntime")
        model = torchbridge.load_model("hf/test/tiny-vit", pretrained=True)
        report = torchbridge.export_onnx(model, tmp_path / "vit.onnx")
        (image,) = report.inputs
        assert image.name == "pixel_values" and image.shape == ("batch", 3, 32, 32)
        assert report.outputs[0].name == "logits" and report.outputs[0].shape == ("batch", 4)
        assert report.batch_sizes_checked == (1, 3) and report.max_abs_diff < 1e-4

    @pytest.mark.parametrize("model_id", ["hf/test/tiny-bert", "hf/test/tiny-gpt2"])
    def test_onnx_export_with_dynamic_batch_and_sequence(self, hf_cache, tmp_path, model_id):
        """Text models export with dynamic batch and sequence axes, verified in onnxruntime."""
        pytest.importorskip("onnxruntime")
        model = torchbridge.load_model(model_id, pretrained=True)
        report = torchbridge.export_onnx(model, tmp_path / "m.onnx")
        names = [i.name for i in report.inputs]
        assert names[:2] == ["input_ids", "attention_mask"]
        assert all(i.shape == ("batch", "sequence") and i.dtype == "int64" for i in report.inputs)
        assert report.outputs[0].name == "logits"
        assert report.batch_sizes_checked == (1, 3) and report.max_abs_diff < 1e-4


def _encoder_inputs(model, batch: int = 2) -> dict:
    """What the encoder of a seq2seq model reads: token ids, or Whisper's log-mel features."""
    config = model.config
    if getattr(config, "num_mel_bins", None):
        frames = 2 * config.max_source_positions  # Whisper's two convolutions halve the frames
        return {"input_features": torch.randn(batch, config.num_mel_bins, frames)}
    return {"input_ids": torch.randint(3, config.vocab_size, (batch, 6))}


class TestTokenChecks:
    @pytest.mark.parametrize(
        "arch",
        [
            "T5ForConditionalGeneration",
            "BartForConditionalGeneration",
            "WhisperForConditionalGeneration",
        ],
    )
    def test_decoder_ids_and_their_mask(self, tiny, arch):
        """decoder_input_ids are checked against the decoder's vocabulary, and
        decoder_attention_mask against them, before the model runs."""
        model = tiny[arch].eval()
        vocab = model.get_decoder().get_input_embeddings().num_embeddings
        enc = _encoder_inputs(model)
        dec = torch.randint(3, vocab, (2, 4))
        want = model(**enc, decoder_input_ids=dec).logits
        bm = torchbridge.bridge(model)
        (logits, *_), _ = bm.forward(grad=False, **enc, decoder_input_ids=dec)
        torch.testing.assert_close(logits, want)
        bad = dec.clone()
        bad[1, 2] = vocab
        with memory.expect_baseline():
            with pytest.raises(
                TokenIdError,
                match=rf"decoder_input_ids holds the id {vocab}, outside the vocabulary of "
                rf"{vocab} tokens.*0-based",
            ):
                bm.forward(**enc, decoder_input_ids=bad)
            with pytest.raises(TokenIdError, match="decoder_input_ids holds the id -1"):
                bm.forward(**enc, decoder_input_ids=dec - dec - 1)
            with pytest.raises(
                MaskShapeError,
                match=r"decoder_attention_mask has torch shape \(2, 3\).*decoder_input_ids has "
                r"torch shape \(2, 4\)",
            ):
                bm.forward(
                    **enc,
                    decoder_input_ids=dec,
                    decoder_attention_mask=torch.ones(2, 3, dtype=torch.int64),
                )
            if "input_ids" in enc:  # the encoder's ids keep their own vocabulary and mask
                with pytest.raises(TokenIdError, match=r"input_ids holds the id -5"):
                    bm.forward(input_ids=enc["input_ids"] * 0 - 5, decoder_input_ids=dec)
                with pytest.raises(
                    MaskShapeError, match=r"attention_mask has torch shape \(2, 5\)"
                ):
                    bm.forward(
                        **enc,
                        attention_mask=torch.ones(2, 5, dtype=torch.int64),
                        decoder_input_ids=dec,
                    )
        bm.close()

    def test_clip_text_tower(self, tiny):
        """CLIP's input_ids are checked against its text tower's vocabulary (config.text_config),
        and its attention_mask against them."""
        model = tiny["CLIPModel"].eval()
        with pytest.raises(NotImplementedError):
            model.get_input_embeddings()  # what hid CLIP's vocabulary before
        vocab = model.config.text_config.vocab_size
        ids = torch.randint(0, vocab, (2, 7))
        pixels = torch.randn(2, 3, 32, 32)
        want = model(input_ids=ids, pixel_values=pixels).logits_per_image
        bm = torchbridge.bridge(model)
        (logits, *_), _ = bm.forward(grad=False, input_ids=ids, pixel_values=pixels)
        torch.testing.assert_close(logits, want)
        bad = ids.clone()
        bad[0, 3] = vocab
        with memory.expect_baseline():
            with pytest.raises(TokenIdError, match=rf"outside the vocabulary of {vocab} tokens"):
                bm.forward(input_ids=bad, pixel_values=pixels)
            with pytest.raises(MaskShapeError, match=r"attention_mask has torch shape \(2, 6\)"):
                bm.forward(
                    input_ids=ids,
                    pixel_values=pixels,
                    attention_mask=torch.ones(2, 6, dtype=torch.int64),
                )
        bm.close()

    def test_masks_beside_inputs_embeds(self, hf_cache):
        """Without ids, a mask must have the shape of inputs_embeds less its last dimension."""
        bm = torchbridge.bridge(torchbridge.load_model("hf/test/tiny-bert", pretrained=True))
        emb = torch.randn(2, 6, 32)
        bm.forward(
            grad=False, inputs_embeds=emb, attention_mask=torch.ones(2, 6, dtype=torch.int64)
        )
        with memory.expect_baseline():
            with pytest.raises(
                MaskShapeError,
                match=r"attention_mask has torch shape \(2, 5\).*inputs_embeds has torch shape "
                r"\(2, 6, 32\)",
            ):
                bm.forward(inputs_embeds=emb, attention_mask=torch.ones(2, 5, dtype=torch.int64))
        bm.close()

    def test_unknown_vocabulary_is_declared_once(self):
        """A model whose vocabulary nothing names warns once that its ids go unchecked;
        its masks are still checked, and the warning can be made an error."""
        from torchbridge.errors import VocabularyUnknownWarning
        from torchbridge.textinputs import TextInputs

        class NoVocabulary(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.table = torch.nn.Parameter(torch.randn(10, 3))

            def forward(self, input_ids, attention_mask=None):
                return self.table[input_ids].sum(-1)

        module = NoVocabulary()
        with pytest.warns(VocabularyUnknownWarning, match=r"NoVocabulary: .*input_ids.*unchecked"):
            bm = torchbridge.bridge(module)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert TextInputs.of(module) is not None  # once per model: no second warning
        ids = torch.randint(0, 10, (2, 4))
        with memory.expect_baseline():
            with pytest.raises(MaskShapeError):
                bm.forward(ids, attention_mask=torch.ones(2, 3, dtype=torch.int64))
        bm.close()
        with memory.expect_baseline(), warnings.catch_warnings():
            warnings.simplefilter("error", VocabularyUnknownWarning)
            with pytest.raises(VocabularyUnknownWarning):
                torchbridge.bridge(NoVocabulary())

    @pytest.mark.cuda
    def test_decoder_ids_on_cuda_are_refused_before_the_kernel(self, tiny):
        """On CUDA a bad decoder id is a TokenIdError, not a device-side assert: the
        context stays usable."""
        model = make_tiny("T5ForConditionalGeneration").eval().cuda()
        bm = torchbridge.bridge(model)
        ids = torch.randint(3, 40, (2, 6), device="cuda")
        dec = torch.randint(3, 40, (2, 4), device="cuda")
        with memory.expect_baseline():
            with pytest.raises(TokenIdError, match="decoder_input_ids holds the id 40"):
                bm.forward(input_ids=ids, decoder_input_ids=dec * 0 + 40)
        (logits, *_), _ = bm.forward(grad=False, input_ids=ids, decoder_input_ids=dec)
        torch.cuda.synchronize()
        assert logits.shape == (2, 4, 40) and bool(torch.isfinite(logits).all())
        bm.close()


# the task each architecture is listed with: one whose Auto class builds that very class
LISTED_TASKS = {
    "BertModel": "feature-extraction",
    "BertForMaskedLM": "masked-lm",
    "BertForTokenClassification": "token-classification",
    "GPT2DoubleHeadsModel": "unknown",  # in none of transformers' Auto mappings
    "GPTNeoXForCausalLM": "causal-lm",
    "T5ForConditionalGeneration": "seq2seq-lm",
    "BartForConditionalGeneration": "seq2seq-lm",
    "WhisperForConditionalGeneration": "speech-seq2seq",
    "HubertForSequenceClassification": "audio-classification",
    "Wav2Vec2ForCTC": "speech-recognition",
    "ViTForImageClassification": "image-classification",
    "SwinForImageClassification": "image-classification",
    "SegformerForSemanticSegmentation": "semantic-segmentation",
    "YolosForObjectDetection": "object-detection",
    "CLIPModel": "zero-shot-image-classification",
}


class TestTasks:
    @pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
    def test_listed_task_loads_the_config_class(self, tiny, arch):
        """load_model(id, task=model_info(id).task) builds, and loads, the class the config names."""
        import transformers

        from torchbridge.registry.sources.hf_source import AUTO_CLASSES

        model_id = f"hf/{arch}"
        entry = torchbridge.model_info(model_id)
        assert entry.metadata["architecture"] == arch
        fresh = torchbridge.load_model(model_id, task=entry.task)
        assert type(fresh).__name__ == arch
        loaded = torchbridge.load_model(model_id, pretrained=True, task=entry.task)
        assert type(loaded).__name__ == arch and same_state(loaded, tiny[arch])
        assert entry.task == LISTED_TASKS[arch]
        if entry.task != "unknown":  # and the task's Auto class takes the config as it is
            auto = getattr(transformers, AUTO_CLASSES[entry.task])
            assert type(auto.from_config(tiny[arch].config)).__name__ == arch

    def test_every_task_is_an_auto_class_of_the_installed_transformers(self):
        """Each task names an Auto class, and the listing reads that class's own mapping."""
        import transformers

        from torchbridge.registry.sources import _hf_tasks

        for task, (auto_name, mapping_name) in _hf_tasks.TASKS.items():
            names = getattr(transformers, auto_name)._model_mapping._model_mapping
            assert names, task
            assert _hf_tasks.mapping(mapping_name) == {
                k: v if isinstance(v, tuple) else (v,) for k, v in names.items()
            }, task
        # a class in several mappings is listed with the first task that names it
        assert _hf_tasks.task_of_architecture("GPT2LMHeadModel", "gpt2") == "causal-lm"
        assert _hf_tasks.task_of_architecture("BertForPreTraining", "bert") == "pretraining"
        # a class under another model_type is not what that config's Auto class builds
        assert _hf_tasks.task_of_architecture("CLIPTextModel", "clip") == "unknown"
        assert _hf_tasks.task_of_architecture("CLIPTextModel") == "feature-extraction"

    def test_listing_imports_no_transformers(self, tmp_path):
        """The task table is read from transformers' source: listing imports no transformers."""
        import subprocess
        import sys

        make_tiny("HubertForSequenceClassification", tmp_path / "hubert")
        code = (
            "import sys, torchbridge\n"
            "e = torchbridge.model_info('hf/hubert')\n"
            "assert e.task == 'audio-classification', e.task\n"
            "assert 'transformers' not in sys.modules\n"
        )
        env = {**__import__("os").environ, "TORCHBRIDGE_HF_DIRS": str(tmp_path)}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


# transformers 5 renames these architectures' saved keys when it loads them
RENAMED_ON_LOAD = [
    "GPTNeoXForCausalLM",
    "ViTForImageClassification",
    "SwinForImageClassification",
    "SegformerForSemanticSegmentation",
    "YolosForObjectDetection",
]


class TestWeightsFile:
    @pytest.mark.parametrize("arch", RENAMED_ON_LOAD)
    def test_own_checkpoint_loads(self, tiny, arch, tmp_path):
        """weights= a model's save_pretrained file loads through transformers' own key
        renaming: every tensor equals the saved model's."""
        from safetensors.torch import load_file

        saved = make_tiny(arch, tmp_path / "saved", seed=1)
        file = tmp_path / "saved" / "model.safetensors"
        own = set(saved.state_dict())
        assert set(load_file(str(file))) != own  # the file's names are not the module's
        model = torchbridge.load_model(f"hf/{arch}", weights=file)
        assert type(model) is type(saved) and same_state(model, saved)
        assert not same_state(model, tiny[arch])  # the file's weights, not the folder's

    def test_weights_that_do_not_fit(self, tiny, tmp_path):
        """A file missing a tensor, with a stray one, or of another shape is a
        CorruptWeightsError naming each, and nothing is left held."""
        from safetensors.torch import load_file, save_file

        arch = "ViTForImageClassification"
        make_tiny(arch, tmp_path / "saved", seed=1)
        state = load_file(str(tmp_path / "saved" / "model.safetensors"))
        name = next(k for k in state if k.endswith("attention.query.weight"))
        cases = {
            "missing": {k: v for k, v in state.items() if k != name},
            "unexpected": {**state, "extra.weight": torch.zeros(2)},
            "mismatch": {**state, name: torch.zeros(3, 3)},
        }
        with memory.expect_baseline():
            for what, bad in cases.items():
                file = tmp_path / f"{what}.safetensors"
                save_file(bad, str(file))
                with pytest.raises(CorruptWeightsError, match=what) as err:
                    torchbridge.load_model(f"hf/{arch}", weights=file)
                assert str(file) in str(err.value)
                assert ("extra.weight" if what == "unexpected" else "layers.0") in str(err.value)

    def test_head_size_follows_the_file(self, tiny, tmp_path):
        """A file with a 5-label head builds a 5-label model; num_labels= a new head on its body."""
        import transformers

        config = transformers.ViTConfig(
            **{**TINY_CONFIGS["ViTForImageClassification"][1], "num_labels": 5}
        )
        saved = transformers.ViTForImageClassification(config)
        saved.save_pretrained(tmp_path / "five")
        file = tmp_path / "five" / "model.safetensors"
        model = torchbridge.load_model("hf/ViTForImageClassification", weights=file)
        assert model.config.num_labels == 5 and same_state(model, saved)
        two = torchbridge.load_model("hf/ViTForImageClassification", weights=file, num_labels=2)
        assert two.classifier.out_features == 2
        body = {k: v for k, v in saved.state_dict().items() if not k.startswith("classifier")}
        assert all(torch.equal(two.state_dict()[k], v) for k, v in body.items())


class _ShellPayload:
    """Pickles as a call to os.system: loading it runs `touch <marker>`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        import shlex

        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class TestPickledWeights:
    """A pytorch_model.bin in an HF folder (the cache, or a save_pretrained folder) is read
    with weights_only: a malicious one is an UnsafeCheckpointError, a damaged one a
    CorruptWeightsError, never a raw pickle error."""

    @pytest.fixture
    def pickled(self, tmp_path, monkeypatch):
        model, _ = make_bert(tmp_path / "bert")
        (tmp_path / "bert" / "model.safetensors").unlink()
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
        monkeypatch.setenv("TORCHBRIDGE_HF_DIRS", str(tmp_path / "dirs"))
        get_registry().refresh()
        yield {"tmp": tmp_path, "model": model}
        get_registry().refresh()

    def _place(self, pickled, where):
        folder = pickled["tmp"] / "bert"
        if where == "cache":
            return "hf/test/pickled", cache_repo(pickled["tmp"] / "hub", "test/pickled", folder)
        target = pickled["tmp"] / "dirs" / "pickled"
        shutil.copytree(folder, target)
        return "hf/pickled", target

    @pytest.mark.parametrize("where", ["cache", "folder"])
    def test_malicious_bin_is_an_unsafe_checkpoint(self, pickled, where):
        """The .bin's payload never runs; the error names the file and trust_pickle."""
        marker = pickled["tmp"] / "pwned"
        state = {**pickled["model"].state_dict(), "payload": _ShellPayload(marker)}
        model_id, folder = self._place(pickled, where)
        torch.save(state, folder / "pytorch_model.bin")
        with memory.expect_baseline(), pytest.raises(UnsafeCheckpointError) as info:
            torchbridge.load_model(model_id, pretrained=True)
        assert str(folder / "pytorch_model.bin") in str(info.value)
        assert "trust_pickle=True" in str(info.value)
        assert not marker.exists()

    @pytest.mark.parametrize("where", ["cache", "folder"])
    def test_damaged_bin_is_corrupt(self, pickled, where):
        """Random bytes in pytorch_model.bin are a CorruptWeightsError naming the file."""
        model_id, folder = self._place(pickled, where)
        rng = np.random.default_rng(0)
        (folder / "pytorch_model.bin").write_bytes(rng.integers(0, 256, 4096, np.uint8).tobytes())
        with pytest.raises(CorruptWeightsError, match="pytorch_model.bin"):
            torchbridge.load_model(model_id, pretrained=True)

    def test_plain_bin_loads(self, pickled):
        """A .bin of tensors loads with weights_only, every tensor equal."""
        model_id, folder = self._place(pickled, "cache")
        torch.save(pickled["model"].state_dict(), folder / "pytorch_model.bin")
        loaded = torchbridge.load_model(model_id, pretrained=True)
        assert same_state(loaded, pickled["model"])
