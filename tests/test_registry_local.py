"""Local models record their own input size and normalisation, or inherit the architecture's."""

from __future__ import annotations

import json
import math

import pytest
import torch

import torchbridge
from torchbridge.errors import InputSpecError, RegistryError, SidecarValueError
from torchbridge.registry import ModelEntry, core
from torchbridge.registry.sources.local_source import resolve_input_spec

ARCH = "timm/test_resnet"


@pytest.fixture
def net():
    import timm

    return timm.create_model("test_resnet", num_classes=5).eval()


def _models_dir(isolated_caches):
    return isolated_caches / "torchbridge" / "models"


class TestRecorded:
    def test_round_trip_through_sidecar_and_model_info(self, net, isolated_caches):
        """input_size, mean and std given at registration are in the sidecar and the entry."""
        returned = torchbridge.register_local_model(
            "small",
            net,
            architecture=ARCH,
            input_size=(3, 32, 24),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.25, 0.125),
        )
        data = json.loads((_models_dir(isolated_caches) / "small.json").read_text())
        assert data["input_size"] == [3, 32, 24]
        assert data["mean"] == [0.5, 0.5, 0.5] and data["std"] == [0.5, 0.25, 0.125]

        entry = torchbridge.model_info("local/small")
        assert entry == returned
        assert entry.input_size == (3, 32, 24)
        assert entry.julia_input_size == (24, 32, 3)
        assert entry.mean == (0.5, 0.5, 0.5) and entry.std == (0.5, 0.25, 0.125)
        assert entry.to_dict()["julia_input_size"] == [24, 32, 3]
        model = torchbridge.load_model("local/small").eval()
        x = torch.randn(2, *entry.input_size)
        assert torch.equal(model(x), net(x))

    def test_lists_and_torch_size_are_accepted(self, net, isolated_caches):
        """A list or torch.Size input size and list mean/std are stored as the same tuples."""
        entry = torchbridge.register_local_model(
            "listed",
            net,
            architecture=ARCH,
            input_size=torch.Size([1, 28, 28]),
            mean=[0],
            std=[1],
        )
        assert entry.input_size == (1, 28, 28) and entry.julia_input_size == (28, 28, 1)
        assert entry.mean == (0.0,) and entry.std == (1.0,)

    def test_registry_method_takes_the_same_arguments(self, net, isolated_caches):
        """ModelRegistry.register_local_model records input_size, mean and std too."""
        entry = core.get_registry().register_local_model(
            "via-method",
            net.state_dict(),
            architecture=ARCH,
            num_classes=5,
            input_size=(3, 16, 16),
            mean=(0.1, 0.2, 0.3),
            std=(0.4, 0.5, 0.6),
        )
        assert torchbridge.model_info("local/via-method").input_size == (3, 16, 16)
        assert entry.mean == (0.1, 0.2, 0.3) and entry.std == (0.4, 0.5, 0.6)


class TestInherited:
    def test_nothing_given_inherits_the_architecture(self, net, isolated_caches):
        """Without input_size, mean and std the entry has the architecture's."""
        arch = torchbridge.model_info(ARCH)
        assert arch.input_size is not None and arch.mean is not None and arch.std is not None
        entry = torchbridge.register_local_model("plain", net, architecture=ARCH)
        assert entry.input_size == arch.input_size
        assert entry.julia_input_size == tuple(reversed(arch.input_size))
        assert entry.mean == arch.mean and entry.std == arch.std
        data = json.loads((_models_dir(isolated_caches) / "plain.json").read_text())
        assert data["input_size"] == list(arch.input_size)

    def test_only_input_size_given_keeps_the_architecture_normalisation(self, net, isolated_caches):
        """A 3-channel input_size alone replaces the size and keeps the architecture's mean/std."""
        arch = torchbridge.model_info(ARCH)
        entry = torchbridge.register_local_model(
            "sized", net, architecture=ARCH, input_size=(3, 32, 32)
        )
        assert entry.input_size == (3, 32, 32) and entry.julia_input_size == (32, 32, 3)
        assert entry.mean == arch.mean and entry.std == arch.std

    def test_only_mean_and_std_given_keep_the_architecture_size(self, net, isolated_caches):
        """mean and std alone replace the normalisation and keep the architecture's size."""
        arch = torchbridge.model_info(ARCH)
        entry = torchbridge.register_local_model(
            "normed", net, architecture=ARCH, mean=(0.5,) * 3, std=(0.5,) * 3
        )
        assert entry.input_size == arch.input_size
        assert entry.mean == (0.5, 0.5, 0.5) and entry.std == (0.5, 0.5, 0.5)


class TestValidation:
    @pytest.mark.parametrize(
        "input_size",
        [(3, 0, 32), (3, -32, 32), (3, 32.0, 32), (True, 32, 32), (), "3x32x32", 32],
    )
    def test_bad_input_size(self, net, isolated_caches, input_size):
        """An input size that is not a non-empty tuple of positive ints is an InputSpecError."""
        with pytest.raises(InputSpecError, match="input_size must be a tuple of positive ints"):
            torchbridge.register_local_model("bad", net, architecture=ARCH, input_size=input_size)
        assert not _models_dir(isolated_caches).exists()

    @pytest.mark.parametrize("mean", [(0.5, "a", 0.5), (0.5, math.nan, 0.5), (), 0.5, "abc"])
    def test_bad_mean_values(self, net, isolated_caches, mean):
        """A mean that is not a sequence of finite floats is an InputSpecError."""
        with pytest.raises(InputSpecError, match="mean must be a sequence of finite floats"):
            torchbridge.register_local_model("bad", net, architecture=ARCH, mean=mean)

    @pytest.mark.parametrize("std", [(0.5, 0.0, 0.5), (0.5, -0.1, 0.5)])
    def test_std_must_be_positive(self, net, isolated_caches, std):
        """A std entry that is zero or negative is an InputSpecError."""
        with pytest.raises(InputSpecError, match=r"std entries must be > 0"):
            torchbridge.register_local_model("bad", net, architecture=ARCH, std=std)

    def test_mean_length_differs_from_given_channels(self, net, isolated_caches):
        """A mean with other than input_size[0] values is an InputSpecError."""
        with pytest.raises(
            InputSpecError, match=r"mean has 3 values, but input_size \(1, 28, 28\)"
        ):
            torchbridge.register_local_model(
                "bad", net, architecture=ARCH, input_size=(1, 28, 28), mean=(0.5,) * 3, std=(0.5,)
            )

    def test_std_length_differs_from_inherited_channels(self, net, isolated_caches):
        """A std that does not fit the architecture's channel count asks for input_size."""
        with pytest.raises(InputSpecError, match="3 channels; pass input_size too"):
            torchbridge.register_local_model("bad", net, architecture=ARCH, mean=(0.5,), std=(0.5,))

    def test_new_channel_count_needs_new_normalisation(self, net, isolated_caches):
        """A 1-channel input_size with the architecture's 3-channel mean asks for mean."""
        with pytest.raises(InputSpecError, match=f"mean of {ARCH} has 3 values; pass mean"):
            torchbridge.register_local_model("bad", net, architecture=ARCH, input_size=(1, 28, 28))

    def test_mean_and_std_lengths_differ_without_a_size(self):
        """Without any input size, a mean and std of different lengths are an InputSpecError."""
        sizeless = ModelEntry(id="toy/sizeless", source="toy", name="sizeless")
        assert resolve_input_spec(sizeless, mean=(0.5,), std=(0.5,)) == (None, (0.5,), (0.5,))
        with pytest.raises(InputSpecError, match="mean has 2 values and std 1"):
            resolve_input_spec(sizeless, mean=(0.5, 0.5), std=(0.5,))

    def test_error_types(self):
        """InputSpecError is a RegistryError and a ValueError."""
        assert issubclass(InputSpecError, RegistryError)
        assert issubclass(InputSpecError, ValueError)


class TestOldSidecars:
    def test_sidecar_without_the_fields_loads(self, net, isolated_caches):
        """A sidecar with no input_size, mean or std loads, and its entry says None for them."""
        from safetensors.torch import save_file

        folder = _models_dir(isolated_caches)
        folder.mkdir(parents=True)
        save_file(net.state_dict(), str(folder / "old.safetensors"))
        (folder / "old.json").write_text(
            json.dumps({"architecture": ARCH, "weights": "old.safetensors", "num_classes": 5})
        )
        entry = torchbridge.model_info("local/old")
        assert entry.input_size is None and entry.julia_input_size is None
        assert entry.mean is None and entry.std is None
        x = torch.randn(1, 3, 32, 32)
        assert torch.equal(torchbridge.load_model("local/old").eval()(x), net(x))

    def test_sidecar_in_the_earlier_written_form_loads(self, net, isolated_caches):
        """A sidecar as register_local_model wrote it before (architecture's values) loads."""
        from safetensors.torch import save_file

        from torchbridge.registry.weights import sha256_file

        arch = torchbridge.model_info(ARCH)
        folder = _models_dir(isolated_caches)
        folder.mkdir(parents=True)
        save_file(net.state_dict(), str(folder / "earlier.safetensors"))
        sidecar = {
            "format": "torchbridge.local/1",
            "architecture": ARCH,
            "weights": "earlier.safetensors",
            "sha256": sha256_file(folder / "earlier.safetensors"),
            "num_classes": 5,
            "task": arch.task,
            "description": "earlier: timm/test_resnet with local weights",
            "tags": list(arch.tags),
            "input_size": list(arch.input_size),
            "mean": list(arch.mean),
            "std": list(arch.std),
            "license": arch.license,
            "kwargs": {},
            "metadata": {},
        }
        (folder / "earlier.json").write_text(json.dumps(sidecar, indent=2))
        entry = torchbridge.model_info("local/earlier")
        assert entry.input_size == arch.input_size and entry.mean == arch.mean
        assert entry.std == arch.std and entry.num_classes == 5
        x = torch.randn(1, *arch.input_size)
        assert torch.equal(torchbridge.load_model("local/earlier").eval()(x), net(x))


def test_local_models_do_not_claim_the_architectures_weight_tags(isolated_caches):
    """A local model lists only its own tags and license, not those of the architecture's published weights."""
    import timm

    import torchbridge

    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    entry = torchbridge.register_local_model(
        "tags-check", model, architecture="timm/resnet10t", num_classes=3, tags=("digits",)
    )
    assert set(entry.tags) == {"local", "digits"}
    assert entry.license is None
    licensed = torchbridge.register_local_model(
        "tags-check-licensed",
        model,
        architecture="timm/resnet10t",
        num_classes=3,
        metadata={"license": "mit"},
    )
    assert licensed.license == "mit"


class TestFailedRegistration:
    def test_metadata_that_is_not_json_writes_nothing(self, net, isolated_caches):
        """Metadata that cannot be stored as JSON is refused before any file is written, so the
        same name can be registered right after."""
        folder = _models_dir(isolated_caches)
        with pytest.raises(SidecarValueError, match="JSON values"):
            torchbridge.register_local_model(
                "unstored", net, architecture=ARCH, metadata={"when": object()}
            )
        assert not folder.exists() or list(folder.iterdir()) == []
        entry = torchbridge.register_local_model("unstored", net, architecture=ARCH)
        assert entry.id == "local/unstored"

    def test_failed_overwrite_keeps_the_earlier_model_loadable(self, net, isolated_caches):
        """An overwrite refused for its metadata leaves the earlier weights and sidecar as they
        were: the model still loads and passes its sha256 check."""
        import timm

        torchbridge.register_local_model("kept", net, architecture=ARCH)
        folder = _models_dir(isolated_caches)
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        other = timm.create_model("test_resnet", num_classes=5)
        with pytest.raises(SidecarValueError, match="JSON values"):
            torchbridge.register_local_model(
                "kept", other, architecture=ARCH, overwrite=True, kwargs={"bad": {1, 2}}
            )
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
        x = torch.randn(1, 3, 32, 32)
        assert torch.equal(torchbridge.load_model("local/kept").eval()(x), net(x))

    def test_failed_write_leaves_no_partial_files(self, net, isolated_caches, monkeypatch):
        """A failure while the weights are written leaves neither the model nor a partial file."""
        import safetensors.torch

        def full_disk(tensors, filename, metadata=None):
            with open(filename, "wb") as f:
                f.write(b"\0" * 10)
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
        with pytest.raises(OSError, match="No space"):
            torchbridge.register_local_model("diskfull", net, architecture=ARCH)
        assert list(_models_dir(isolated_caches).iterdir()) == []


class TestOwnRegistry:
    def test_custom_registry_builds_local_models_from_its_own_sources(self, tmp_path):
        """A local model of a ModelRegistry of its own is built by that registry, from an
        architecture the process-wide registry does not have."""
        from test_registry_listing import ToySource
        from torchbridge.registry.sources.local_source import LocalSource

        registry = core.ModelRegistry(sources=[ToySource(), LocalSource()], discover=False)
        toy = registry.load_model("toy/two-layer", num_classes=4)
        registry.register_local_model(
            "mine", toy, architecture="toy/two-layer", directory=tmp_path / "mine"
        )
        x = torch.randn(3, 8)
        assert torch.equal(registry.load_model("local/mine")(x), toy(x))

    def test_local_source_with_its_own_folder(self, tmp_path, isolated_caches):
        """LocalSource(directories=[folder]) saves there by default and searches only there;
        the process-wide registry does not see what it holds."""
        from test_registry_listing import ToySource
        from torchbridge.errors import UnknownModelError
        from torchbridge.registry.sources.local_source import LocalSource

        folder = tmp_path / "mine"
        registry = core.ModelRegistry(
            sources=[ToySource(), LocalSource(directories=[folder])], discover=False
        )
        toy = registry.load_model("toy/two-layer", num_classes=4)
        entry = registry.register_local_model("mine", toy, architecture="toy/two-layer")
        assert entry.num_classes == 4 and (folder / "mine.safetensors").is_file()
        x = torch.randn(3, 8)
        assert torch.equal(registry.load_model("local/mine")(x), toy(x))
        with pytest.raises(UnknownModelError):
            torchbridge.model_info("local/mine")
        assert not _models_dir(isolated_caches).exists()

    def test_sources_do_not_import_the_registry(self):
        """No source module imports registry.core (sources reach their registry through the
        attribute the registry sets), so the two import in one direction."""
        import ast
        from pathlib import Path

        import torchbridge.registry.sources as sources

        for path in Path(sources.__file__).parent.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    name = "." * node.level + (node.module or "")
                    assert name not in ("..core", "torchbridge.registry.core"), path.name
