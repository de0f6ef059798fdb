"""The registry's listing, lookup, errors and pluggable sources."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import torchbridge
from torchbridge.errors import (
    DuplicateSourceError,
    UnknownModelError,
    UnknownSourceError,
)
from torchbridge.registry import ModelEntry, ModelSource, WeightsInfo, core


class ToySource(ModelSource):
    """A source with one tiny model, for run-time registration tests."""

    name = "toy"

    def entries(self):
        return [
            ModelEntry(
                id="toy/two-layer",
                source="toy",
                name="two-layer",
                task="image-classification",
                description="a two-layer perceptron",
                input_size=(8,),
                num_classes=3,
            )
        ]

    def load(self, entry, *, pretrained, weights, num_classes, trust_pickle, **kwargs):
        return torch.nn.Sequential(
            torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, num_classes or 3)
        )


@pytest.fixture
def toy_registry(monkeypatch):
    """Make the process-wide registry a fresh one with no built-in sources."""
    registry = core.ModelRegistry(sources=[], discover=False)
    monkeypatch.setattr(core, "_REGISTRY", registry)
    return registry


def make_hf_cache_file(
    hf_cache: Path, repo: str, filename: str, payload_from: torch.nn.Module
) -> Path:
    """Lay out a Hugging Face cache entry (refs/main -> snapshots/<rev>/<file>) holding a model."""
    from safetensors.torch import save_file

    repo_dir = hf_cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0123abcd")
    save_file(payload_from.state_dict(), str(snapshot / filename))
    return snapshot / filename


class TestListing:
    def test_sources_and_source_filter(self):
        """Every built-in source contributes entries and source= keeps only one source."""
        sources = {e.source for e in torchbridge.list_models()}
        assert {"timm", "torchvision"} <= sources
        timm_only = torchbridge.list_models(source="timm")
        assert timm_only and {e.source for e in timm_only} == {"timm"}
        assert all(e.id == f"timm/{e.name}" for e in timm_only)

    def test_timm_lists_architectures_and_pretrained_tags(self):
        """timm contributes every architecture and every pretrained tag, as timm itself lists
        them."""
        import timm

        ids = {e.id for e in torchbridge.list_models(source="timm")}
        assert {f"timm/{n}" for n in timm.list_models()} <= ids
        assert {f"timm/{n}" for n in timm.list_models(pretrained=True)} <= ids

    def test_pattern_matches_id_or_name_without_case(self):
        """A wildcard pattern matches ids or names, ignoring case."""
        by_name = {e.id for e in torchbridge.list_models("resnet18*")}
        assert {"timm/resnet18", "timm/resnet18.a1_in1k", "torchvision/resnet18"} <= by_name
        by_id = {e.id for e in torchbridge.list_models("TIMM/RESNET18")}
        assert by_id == {"timm/resnet18"}

    def test_pretrained_and_task_filters(self):
        """pretrained= and task= keep exactly the entries with that value."""
        without = torchbridge.list_models(source="timm", pretrained=False)
        assert without and not any(e.pretrained for e in without)
        detection = torchbridge.list_models(task="object-detection")
        assert detection and {e.task for e in detection} == {"object-detection"}
        assert "torchvision/fasterrcnn_resnet50_fpn" in {e.id for e in detection}

    def test_unknown_source_filter(self):
        """Filtering on a source that does not exist raises UnknownSourceError naming the
        sources."""
        with pytest.raises(UnknownSourceError, match="timm"):
            torchbridge.list_models(source="timmm")


class TestModelInfo:
    def test_timm_entry_fields(self, isolated_caches):
        """A timm entry carries the pretrained config: sizes in both orders, normalisation, classes,
        license, weights."""
        e = torchbridge.model_info("timm/resnet18.a1_in1k")
        assert (e.source, e.name, e.task) == ("timm", "resnet18.a1_in1k", "image-classification")
        assert e.pretrained is True
        assert e.input_size == (3, 224, 224) and e.julia_input_size == (224, 224, 3)
        assert e.mean == (0.485, 0.456, 0.406) and e.std == (0.229, 0.224, 0.225)
        assert e.num_classes == 1000 and e.license == "apache-2.0"
        assert isinstance(e.weights, WeightsInfo)
        assert e.weights.location == "hf-hub:timm/resnet18.a1_in1k"
        assert e.weights.cached is False
        assert e.weights.path.startswith(str(isolated_caches / "hf" / "hub"))

    def test_one_timm_model_by_id_never_lists_the_source(self, isolated_caches, monkeypatch):
        """model_info and load_model of one timm id build that entry alone, the same entry the listing has; the cache flag is read for it too."""
        from torchbridge.registry.sources.timm_source import TimmSource

        registry = core.ModelRegistry()

        def no_listing(self):
            raise AssertionError("the whole timm table was built for one id")

        with monkeypatch.context() as m:
            m.setattr(TimmSource, "build_table", no_listing)
            alone = registry.model_info("timm/resnet18.a1_in1k")
            untagged = registry.model_info("timm/resnet18")
            registry.load_model("timm/test_resnet", num_classes=3)
            assert registry.source("timm").get("resnet18.no_such_tag") is None
        assert alone == torchbridge.model_info("timm/resnet18.a1_in1k")
        assert untagged == torchbridge.model_info("timm/resnet18")
        with monkeypatch.context() as m:
            m.setattr(TimmSource, "build_table", no_listing)
            make_hf_cache_file(
                isolated_caches / "hf" / "hub",
                "timm/resnet18.a1_in1k",
                "model.safetensors",
                torch.nn.Linear(1, 1),
            )
            assert core.ModelRegistry().model_info("timm/resnet18.a1_in1k").weights.cached

    def test_torchvision_entry_fields(self, isolated_caches):
        """A torchvision entry names its URL file, the sha256 prefix in it, and where it would be
        cached."""
        e = torchbridge.model_info("torchvision/resnet18")
        assert e.weights.filename == "resnet18-f37072fd.pth"
        assert e.weights.sha256 == "f37072fd"
        assert e.weights.path == str(
            isolated_caches / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
        )
        assert e.input_size == (3, 224, 224) and e.num_classes == 1000
        tagged = torchbridge.model_info("torchvision/resnet50.IMAGENET1K_V2")
        assert tagged.pretrained and "IMAGENET1K_V2" in tagged.description

    def test_to_dict_is_plain_json(self):
        """to_dict() survives a JSON round trip with every field, tuples as lists."""
        e = torchbridge.model_info("timm/resnet18")
        data = json.loads(json.dumps(e.to_dict()))
        assert data["id"] == "timm/resnet18"
        assert data["julia_input_size"] == [224, 224, 3]
        assert data["weights"]["location"].startswith("hf-hub:")
        assert set(data) >= {
            "id",
            "source",
            "name",
            "task",
            "description",
            "pretrained",
            "weights",
            "input_size",
            "julia_input_size",
            "mean",
            "std",
            "num_classes",
            "license",
            "tags",
        }

    def test_cached_flag_follows_the_hf_cache(self, isolated_caches):
        """An entry reports cached weights once the file is in the Hugging Face cache, and the
        file's path."""
        import timm

        repo = "timm/test_resnet.r160_in1k"
        assert torchbridge.model_info(repo).weights.cached is False
        path = make_hf_cache_file(
            isolated_caches / "hf" / "hub",
            repo,
            "model.safetensors",
            timm.create_model("test_resnet"),
        )
        e = torchbridge.model_info(repo)
        assert e.weights.cached is True and e.weights.path == str(path)
        listed = {x.id: x for x in torchbridge.list_models("timm/test_resnet*")}
        assert listed[repo].weights.cached is True
        path.unlink()
        assert torchbridge.model_info(repo).weights.cached is False

    def test_cached_flag_follows_the_hub_checkpoints(self, isolated_caches):
        """A torchvision entry reports its weights cached while its file is in torch.hub's
        checkpoints folder, as timm's URL weights do."""
        tv = "torchvision/shufflenet_v2_x0_5"
        name = torchbridge.model_info(tv).weights.filename
        ckpt = isolated_caches / "torch" / "hub" / "checkpoints"
        ckpt.mkdir(parents=True)
        (ckpt / name).write_bytes(b"weights")
        assert torchbridge.model_info(tv).weights.cached is True
        assert torchbridge.model_info(tv).weights.path == str(ckpt / name)
        (ckpt / name).unlink()
        assert torchbridge.model_info(tv).weights.cached is False

    def test_refresh_rebuilds_the_entries_of_every_source(self, isolated_caches, monkeypatch):
        """After refresh(), timm and torchvision entries are built again from their libraries,
        whatever the caches hold."""
        from torchvision.models import ShuffleNet_V2_X0_5_Weights

        registry = core.get_registry()
        tv = "torchvision/shufflenet_v2_x0_5"
        member = ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1
        url = "https://example.invalid/models/shufflenet-0123abcd.pth"
        assert torchbridge.model_info(tv).weights.location != url  # entries built for these caches
        try:
            monkeypatch.setattr(member.value, "url", url)
            registry.refresh()
            assert torchbridge.model_info(tv).weights.location == url
            assert torchbridge.model_info(tv).weights.filename == "shufflenet-0123abcd.pth"
        finally:
            monkeypatch.undo()
            registry.refresh()
        assert torchbridge.model_info(tv).weights.location != url


class TestUnknownIds:
    def test_typo_gets_suggestions(self):
        """A mistyped id raises UnknownModelError whose message and suggestions hold the right
        id."""
        with pytest.raises(UnknownModelError) as info:
            torchbridge.model_info("timm/resnt18")
        assert "timm/resnet18" in info.value.suggestions
        assert "Did you mean" in str(info.value) and "timm/resnet18" in str(info.value)
        assert info.value.model_id == "timm/resnt18"

    def test_bare_name_suggests_every_source(self):
        """An id without a source suggests the same name in each source that has it."""
        with pytest.raises(UnknownModelError) as info:
            torchbridge.model_info("resnet18")
        assert info.value.suggestions[:2] == ("timm/resnet18", "torchvision/resnet18")

    def test_unknown_source(self):
        """An id with an unknown source raises UnknownSourceError with the closest source."""
        with pytest.raises(UnknownSourceError, match="Did you mean 'timm'"):
            torchbridge.load_model("tim/resnet18")

    def test_case_is_forgiven_when_unambiguous(self):
        """A torchvision weights tag in other case still finds its entry."""
        assert torchbridge.model_info("torchvision/resnet18.imagenet1k_v1").id == (
            "torchvision/resnet18.IMAGENET1K_V1"
        )


class TestPluggableSources:
    def test_register_source_at_run_time(self, toy_registry):
        """A source registered at run time is listed, described and loaded by its ids."""
        torchbridge.register_source(ToySource())
        assert [e.id for e in torchbridge.list_models()] == ["toy/two-layer"]
        assert torchbridge.model_info("toy/two-layer").input_size == (8,)
        model = torchbridge.load_model("toy/two-layer", num_classes=5)
        assert model(torch.randn(2, 8)).shape == (2, 5)

    def test_duplicate_source_name(self, toy_registry):
        """Registering a second source of the same name fails unless replace=True."""
        first = torchbridge.register_source(ToySource)
        with pytest.raises(DuplicateSourceError, match="replace=True"):
            torchbridge.register_source(ToySource())
        second = torchbridge.register_source(ToySource(), replace=True)
        assert toy_registry.source("toy") is second and second is not first

    def test_register_source_rejects_non_sources(self, toy_registry):
        """Something that is not a ModelSource is refused with a TypeError."""
        with pytest.raises(TypeError, match="ModelSource"):
            torchbridge.register_source(object())

    @pytest.mark.parametrize("name", ["", "to/y"])
    def test_register_source_rejects_a_bad_name(self, toy_registry, name):
        """A source's name is one id part: empty or with '/' is a RegistryArgumentError, and
        nothing is registered."""
        from torchbridge.errors import RegistryArgumentError

        class Named(ToySource):
            pass

        Named.name = name
        with pytest.raises(RegistryArgumentError, match="non-empty name without '/'"):
            torchbridge.register_source(Named())
        assert name not in toy_registry._sources

    def test_entry_point_group_is_discovered(self, tmp_path, monkeypatch):
        """A package's entry point in group torchbridge.sources adds its source; a broken one
        warns."""
        (tmp_path / "toy_plugin.py").write_text(
            textwrap.dedent(
                f"""
                import sys
                sys.path.insert(0, {str(Path(__file__).parent)!r})
                from test_registry_listing import ToySource
                """
            )
        )
        dist = tmp_path / "toy_plugin-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(
            "[torchbridge.sources]\ntoy = toy_plugin:ToySource\nbroken = toy_plugin:Missing\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        registry = core.ModelRegistry(sources=[], discover=True)
        with pytest.warns(UserWarning, match="'broken'"):
            names = [s.name for s in registry.sources()]
        assert names == ["toy"]
        assert [e.id for e in registry.list_models()] == ["toy/two-layer"]
        sys.modules.pop("toy_plugin", None)
