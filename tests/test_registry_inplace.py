"""Checkpoints loaded in place (NOTE [loading in place]), sharded checkpoints, model sizes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file, save_model

import torchbridge
from torchbridge.errors import CorruptWeightsError
from torchbridge.registry.core import get_registry
from torchbridge.registry.sizes import model_size
from torchbridge.registry.weights import (
    build_for_loading,
    checkpoint_sha256,
    load_into_model,
    load_state_dict,
    sha256_file,
)

ROOT = Path(__file__).resolve().parent.parent


class WithRotary(torch.nn.Module):
    """A module with a tensor no checkpoint holds (a non-persistent buffer)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.register_buffer("freq", torch.arange(4.0), persistent=False)


class WithAttribute(torch.nn.Module):
    """A module keeping a tensor as a plain attribute."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.mask = torch.ones(4)


class Tied(torch.nn.Module):
    """An embedding whose matrix is also the output layer's (one parameter, two names)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(5, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.emb.weight


class TestInPlace:
    def test_parameters_are_the_files_mapped_tensors(self, tmp_path):
        """The loaded model's parameters are the tensors read from the file, not copies of
        them; writing to one leaves the file as it was."""
        torch.manual_seed(0)
        source = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16))
        path = tmp_path / "w.safetensors"
        save_file(source.state_dict(), str(path))
        state = load_state_dict(path)
        addresses = {k: v.data_ptr() for k, v in state.items()}
        model = build_for_loading(
            lambda: torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16))
        )
        assert next(model.parameters()).is_meta  # nothing allocated before the load
        load_into_model(model, state, source=str(path))
        assert {k: v.data_ptr() for k, v in model.state_dict().items()} == addresses
        assert all(
            p.requires_grad and isinstance(p, torch.nn.Parameter) for p in model.parameters()
        )
        x = torch.randn(5, 8)
        torch.testing.assert_close(model.eval()(x), source.eval()(x))
        with torch.no_grad():
            model[0].weight.add_(1.0)
        assert torch.equal(load_state_dict(path)["0.weight"], source[0].weight)

    @pytest.mark.parametrize(("cls", "builds"), [(torch.nn.Linear, 1), (WithRotary, 2)])
    def test_meta_only_when_the_checkpoint_holds_every_tensor(self, cls, builds):
        """A module with a tensor the checkpoint lacks is built normally, keeping that tensor."""
        calls = []

        def build():
            calls.append(1)
            return cls(4, 4) if cls is torch.nn.Linear else cls()

        model = build_for_loading(build)
        assert len(calls) == builds
        if cls is WithRotary:
            assert torch.equal(model.freq, torch.arange(4.0))
        calls.clear()
        assert not build_for_loading(lambda: (calls.append(1), WithAttribute())[1]).mask.is_meta
        assert len(calls) == 2

    def test_tied_weights_stay_one_parameter(self, tmp_path, monkeypatch):
        """GPT-2's head is its embedding: stored once, loaded by transformers (NOTE [hf weights
        files]), still one parameter."""
        pytest.importorskip("transformers")
        from hf_models import cache_repo, make_gpt2

        reference, _ = make_gpt2(tmp_path / "gpt2")
        cache_repo(tmp_path / "hub", "test/tiny-gpt2", tmp_path / "gpt2")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
        get_registry().refresh()
        path = tmp_path / "gpt2.safetensors"
        save_model(reference, str(path))  # the tied tensor once
        model = torchbridge.load_model("hf/test/tiny-gpt2", weights=path)
        assert model.lm_head.weight is model.transformer.wte.weight
        for name, value in reference.state_dict().items():
            assert torch.equal(model.state_dict()[name], value), name
        get_registry().refresh()

    @pytest.mark.parametrize(
        "given", [("emb.weight",), ("head.weight",), ("emb.weight", "head.weight")]
    )
    def test_a_tied_weight_loads_once_under_any_of_its_names(self, given):
        """load_into_model ties the weight again whichever of its names the file holds it under
        (both, with the same values, too): one parameter holding the file's values."""
        value = torch.randn(5, 3)
        model = build_for_loading(Tied)
        load_into_model(model, {name: value.clone() for name in given}, source="memory")
        assert model.head.weight is model.emb.weight
        assert [n for n, _ in model.named_parameters()] == ["emb.weight"]
        assert torch.equal(model.emb.weight, value)
        ids = torch.tensor([0, 4])
        torch.testing.assert_close(model.head(model.emb(ids)), value[ids] @ value.T)

    def test_tied_names_with_different_values_are_refused(self):
        """A file holding the two names of one tied weight with different values is a
        CorruptWeightsError naming both keys, and nothing is loaded."""
        model = build_for_loading(Tied)
        state = {"emb.weight": torch.randn(5, 3), "head.weight": torch.randn(5, 3)}
        with pytest.raises(CorruptWeightsError, match="emb.weight and head.weight") as info:
            load_into_model(model, state, source="tied.safetensors")
        assert info.value.tied_keys == ("emb.weight", "head.weight")
        assert model.emb.weight.is_meta and model.head.weight is model.emb.weight

    def test_a_checkpoint_in_another_dtype_is_converted(self, tmp_path):
        """bfloat16 tensors loaded into a float32 model become float32, value for value."""
        torch.manual_seed(0)
        source = torch.nn.Linear(3, 2).to(torch.bfloat16)
        model = torch.nn.Linear(3, 2)
        load_into_model(model, dict(source.state_dict()), source="memory")
        assert model.weight.dtype == torch.float32
        assert torch.equal(model.weight, source.weight.float())

    def test_peak_memory_is_one_copy(self, tmp_path):
        """Loading a 100 MB checkpoint by weights= and reading every weight once raises the peak
        resident memory of a fresh process by at most 1.3 times the file (two copies: 2)."""
        timm = pytest.importorskip("timm")
        if not Path("/proc/self/clear_refs").exists():
            pytest.skip("needs Linux's /proc to reset the peak resident memory")
        path = tmp_path / "resnet50.safetensors"
        save_file(timm.create_model("resnet50").state_dict(), str(path))
        script = textwrap.dedent(
            """
            import json, os, sys
            import torch, torchbridge

            def status(key):
                with open("/proc/self/status") as f:
                    return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))

            torchbridge.load_model("timm/test_resnet")  # imports and first-call set-up
            base = status("VmRSS:")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # the peak (VmHWM) starts again from here
            model = torchbridge.load_model("timm/resnet50", weights=sys.argv[1])
            touched = sum(float(t.float().sum()) for t in model.state_dict().values())
            print(json.dumps({"peak": status("VmHWM:") - base, "size": os.path.getsize(sys.argv[1])}))
            """
        )
        run = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(ROOT / "python")},
        )
        assert run.returncode == 0, run.stderr
        figures = json.loads(run.stdout.strip().splitlines()[-1])
        assert figures["peak"] <= 1.3 * figures["size"], figures


class TestShards:
    def write_shards(self, state: dict, folder: Path) -> Path:
        """Two safetensors shards and their index, in transformers' layout."""
        keys = list(state)
        half = len(keys) // 2
        weight_map = {}
        for i, part in enumerate((keys[:half], keys[half:]), start=1):
            name = f"model-0000{i}-of-00002.safetensors"
            save_file({k: state[k].contiguous() for k in part}, str(folder / name))
            weight_map.update(dict.fromkeys(part, name))
        index = folder / "model.safetensors.index.json"
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        return index

    def test_weights_may_be_a_sharded_index(self, tmp_path):
        """weights= a model.safetensors.index.json loads every shard; its size counts them all."""
        torch.manual_seed(0)
        source = torchbridge.load_model("timm/test_resnet", num_classes=5)
        index = self.write_shards(source.state_dict(), tmp_path)
        model = torchbridge.load_model("timm/test_resnet", weights=index)
        for name, value in source.state_dict().items():
            assert torch.equal(model.state_dict()[name], value), name
        (tmp_path / "model-00002-of-00002.safetensors").unlink()
        with pytest.raises(CorruptWeightsError, match="names shards that are not in its folder"):
            torchbridge.load_model("timm/test_resnet", weights=index)

    @pytest.mark.parametrize(
        ("shard", "problem"),
        [
            ("../outside/secret.safetensors", "a path, not a file"),
            ("{outside}/secret.safetensors", "a path, not a file"),
            ("link.safetensors", "leads out of the index's folder"),
            ("model.safetensors.index.json", "an index itself"),
            (5, "not a file name"),
        ],
    )
    def test_an_index_names_files_of_its_own_folder_only(self, tmp_path, shard, problem):
        """A weight_map entry outside the index's folder (a relative or absolute path, a link
        out, or an index, which would recurse) is a CorruptWeightsError naming it, and the
        file it names is never read; the same for a local model's sidecar that names it."""
        torch.manual_seed(0)
        outside = tmp_path / "outside"
        outside.mkdir()
        save_file(torch.nn.Linear(4, 3).state_dict(), str(outside / "secret.safetensors"))
        folder = tmp_path / "models"
        folder.mkdir()
        (folder / "link.safetensors").symlink_to(outside / "secret.safetensors")
        if isinstance(shard, str):
            shard = shard.format(outside=outside)
        index = folder / "model.safetensors.index.json"
        index.write_text(json.dumps({"weight_map": {"weight": shard, "bias": shard}}))
        from torchbridge.registry import weights

        read = []
        real_load = weights._load_safetensors

        def spy(path):  # every safetensors file torchbridge reads goes through it
            read.append(str(path))
            return real_load(path)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(weights, "_load_safetensors", spy)
            with pytest.raises(CorruptWeightsError, match=problem):
                load_state_dict(index)
            with pytest.raises(CorruptWeightsError, match=problem):
                torchbridge.load_model("timm/test_resnet", weights=index)
        assert not read, read

    def test_an_index_naming_too_many_shards_is_refused(self, tmp_path):
        """More shard names than any checkpoint has is refused before any is looked at."""
        from torchbridge.registry.weights import MAX_SHARDS

        index = tmp_path / "model.safetensors.index.json"
        names = {f"t{i}": f"s{i}.safetensors" for i in range(MAX_SHARDS + 1)}
        index.write_text(json.dumps({"weight_map": names}))
        with pytest.raises(CorruptWeightsError, match="more than any checkpoint has"):
            load_state_dict(index)

    def test_a_sharded_checkpoint_is_hashed_with_its_shards(self, tmp_path):
        """checkpoint_sha256 of an index changes when a shard does; of a file, it is its sha256."""
        torch.manual_seed(0)
        index = self.write_shards(torch.nn.Linear(4, 3).state_dict(), tmp_path)
        before = checkpoint_sha256(index)
        shard = tmp_path / "model-00002-of-00002.safetensors"
        assert checkpoint_sha256(shard) == sha256_file(shard)
        save_file({"bias": torch.ones(3)}, str(shard))
        assert checkpoint_sha256(index) != before

    def test_a_sharded_transformers_folder_loads(self, tmp_path, monkeypatch):
        """A Hugging Face repo saved in shards loads every tensor; info reads every shard."""
        pytest.importorskip("transformers")
        from hf_models import cache_repo, make_llama

        reference, _ = make_llama(tmp_path / "one")
        reference.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (tmp_path / "sharded" / name).write_bytes((tmp_path / "one" / name).read_bytes())
        assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
        cache_repo(tmp_path / "hub", "test/sharded-llama", tmp_path / "sharded")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
        get_registry().refresh()
        try:
            model = torchbridge.load_model("hf/test/sharded-llama", pretrained=True)
            for name, value in reference.state_dict().items():
                assert torch.equal(model.state_dict()[name], value), name
            size = model_size("hf/test/sharded-llama")
            values = sum(p.numel() for p in reference.parameters())
            assert size.counted_from == "weights file" and len(size.files) > 2
            assert size.parameters == values and size.bytes == {"float32": 4 * values}
        finally:
            get_registry().refresh()


class TestHostileHuggingFaceFolders:
    """A Hugging Face cache or folder written by someone else reads nothing outside it, and
    a folder whose parts disagree is a typed error."""

    @pytest.fixture
    def llama(self, tmp_path, monkeypatch):
        pytest.importorskip("transformers")
        from hf_models import make_llama

        reference, _ = make_llama(tmp_path / "one")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
        yield reference
        get_registry().refresh()

    def test_refs_main_never_leads_out_of_the_cache(self, tmp_path, llama):
        """refs/main naming '../../..' is not followed: the repository's own snapshot is."""
        from hf_models import cache_repo

        snap = cache_repo(tmp_path / "hub", "test/refs", tmp_path / "one")
        outside = tmp_path / "outside"
        shutil.copytree(tmp_path / "one", outside)
        (snap.parent.parent / "refs" / "main").write_text("../../../../outside")
        get_registry().refresh()
        entry = torchbridge.model_info("hf/test/refs")
        assert Path(entry.metadata["folder"]).resolve() == snap.resolve()

    def test_a_sharded_folder_whose_index_leads_out_is_refused(self, tmp_path, llama):
        """A cached repository whose index names a shard outside its snapshot is refused
        before transformers reads any shard."""
        from hf_models import cache_repo

        llama.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
        snap = cache_repo(tmp_path / "hub", "test/escape", tmp_path / "sharded")
        index = snap / "model.safetensors.index.json"
        content = json.loads(index.read_text())
        first = next(iter(content["weight_map"]))
        content["weight_map"][first] = "../../../../outside.safetensors"
        index.write_text(json.dumps(content))
        get_registry().refresh()
        with pytest.raises(CorruptWeightsError, match="is a path, not a file"):
            torchbridge.load_model("hf/test/escape", pretrained=True)

    def test_weights_that_do_not_fit_the_config_are_corrupt(self, tmp_path, llama):
        """A config.json whose sizes the folder's weights do not have is a CorruptWeightsError
        naming the folder, not transformers' RuntimeError."""
        from hf_models import cache_repo

        snap = cache_repo(tmp_path / "hub", "test/misfit", tmp_path / "one")
        config = json.loads((snap / "config.json").read_text())
        config["hidden_size"] *= 2
        (snap / "config.json").write_text(json.dumps(config))
        get_registry().refresh()
        with pytest.raises(CorruptWeightsError, match="do not fit the model its config.json"):
            torchbridge.load_model("hf/test/misfit", pretrained=True)

    def test_damaged_weights_are_corrupt(self, tmp_path, llama):
        """A cached repository whose model.safetensors has a damaged header is a
        CorruptWeightsError naming the folder."""
        from hf_models import cache_repo

        snap = cache_repo(tmp_path / "hub", "test/damaged", tmp_path / "one")
        (snap / "model.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{garbage" * 3)
        get_registry().refresh()
        with pytest.raises(CorruptWeightsError, match="not readable safetensors files"):
            torchbridge.load_model("hf/test/damaged", pretrained=True)

    def test_a_config_far_larger_than_its_weights_is_refused_before_allocating(
        self, tmp_path, llama
    ):
        """NOTE [bounded loading]: a config.json describing billions of values beside the
        weights of a tiny model is a CorruptWeightsError, before transformers allocates and
        randomly fills the difference (here about 3 GB)."""
        import resource

        from hf_models import cache_repo

        snap = cache_repo(tmp_path / "hub", "test/giant", tmp_path / "one")
        config = json.loads((snap / "config.json").read_text())
        config.update(vocab_size=100_000, hidden_size=8192, num_attention_heads=64)
        (snap / "config.json").write_text(json.dumps(config))
        get_registry().refresh()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(CorruptWeightsError, match="would fill .* random ones"):
            torchbridge.load_model("hf/test/giant", pretrained=True)
        grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        assert grown_kb < 1_000_000, grown_kb  # nothing near the model's size was allocated


def test_sizes_from_the_architecture(isolated_caches):
    """Without weights here, a size is counted on the model built on the meta device."""
    size = model_size("timm/resnet18")
    # 11,689,512 parameters and 9,620 BatchNorm statistics (the counters are int64)
    assert size.counted_from == "architecture" and size.parameters == 11_699_132
    assert size.bytes == {"float32": 4 * 11_699_112, "int64": 8 * 20}
