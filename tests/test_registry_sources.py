"""Each source end to end: save weights, load them back through the registry by id."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

import torchbridge
from torchbridge.errors import (
    ChecksumError,
    CorruptWeightsError,
    DuplicateModelError,
    RegistryError,
    UnknownModelError,
    WeightsNotFoundError,
)
from torchbridge.registry.sources import hub_source

TIMM_TAG = "timm/test_resnet.r160_in1k"
TV_ID = "torchvision/shufflenet_v2_x0_5"


@pytest.fixture
def image():
    return torch.randn(2, 3, 64, 64)


@pytest.fixture
def timm_model():
    import timm

    return timm.create_model("test_resnet").eval()


@pytest.fixture
def tv_model():
    import torchvision

    return torchvision.models.shufflenet_v2_x0_5().eval()


def _save_safetensors(model, path):
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(path))
    return path


def _body_equal(reference, other, head_prefix):
    """Every tensor outside the head is identical; returns the keys compared."""
    ref, got = reference.state_dict(), other.state_dict()
    body = [k for k in ref if not k.startswith(head_prefix)]
    assert body
    for key in body:
        assert torch.equal(ref[key], got[key]), key
    return body


class TestTimm:
    def test_round_trip_explicit_file(self, tmp_path, timm_model, image, isolated_caches):
        """Weights saved from a timm model load back by id with weights=PATH and give identical
        outputs."""
        path = _save_safetensors(timm_model, tmp_path / "w.safetensors")
        model = torchbridge.load_model(TIMM_TAG, weights=path).eval()
        assert torch.equal(model(image), timm_model(image))
        assert model.pretrained_cfg["file"] == str(path)

    def test_num_classes_zero_gives_pooled_features(self, image):
        """num_classes=0 is timm's headless model: (N, num_features) pooled features."""
        model = torchbridge.load_model("timm/test_resnet", num_classes=0).eval()
        assert model(image).shape == (2, model.num_features)

    def test_round_trip_from_hf_cache_offline(self, timm_model, image, isolated_caches):
        """pretrained=True finds the file in the Hugging Face cache and never needs the network."""
        from test_registry_listing import make_hf_cache_file

        make_hf_cache_file(
            isolated_caches / "hf" / "hub", TIMM_TAG, "model.safetensors", timm_model
        )
        model = torchbridge.load_model(TIMM_TAG, pretrained=True).eval()
        assert torch.equal(model(image), timm_model(image))

    def test_num_classes_replaces_head_and_keeps_body(self, tmp_path, timm_model, isolated_caches):
        """num_classes gives a new head of that size and keeps every pretrained body weight."""
        path = _save_safetensors(timm_model, tmp_path / "w.safetensors")
        model = torchbridge.load_model(TIMM_TAG, weights=path, num_classes=7).eval()
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
        _body_equal(timm_model, model, "fc.")
        assert model.fc.weight.shape == (7, timm_model.fc.in_features)

    def test_random_init_and_builder_kwargs(self):
        """Without pretrained, the architecture is built with the given head size and builder
        kwargs."""
        model = torchbridge.load_model("timm/test_resnet", num_classes=3, drop_rate=0.25)
        assert model.fc.out_features == 3 and model.drop_rate == 0.25

    def test_weights_of_another_architecture(self, tmp_path, tv_model, isolated_caches):
        """torchvision weights given to a timm model are a CorruptWeightsError with the key
        differences."""
        path = _save_safetensors(tv_model, tmp_path / "tv.safetensors")
        with pytest.raises(CorruptWeightsError, match="missing keys"):
            torchbridge.load_model(TIMM_TAG, weights=path)


class TestTorchvision:
    def test_round_trip_explicit_file(self, tmp_path, tv_model, image, isolated_caches):
        """torchvision weights saved to a file load back by id with identical outputs."""
        path = tmp_path / "tv.pth"
        torch.save(tv_model.state_dict(), path)
        model = torchbridge.load_model(TV_ID, weights=path).eval()
        assert torch.equal(model(image), tv_model(image))

    def test_round_trip_from_hub_cache(self, tv_model, image, isolated_caches, monkeypatch):
        """pretrained=True finds the file in torch.hub's checkpoints folder and checks its hash
        prefix."""
        from torchvision.models import ShuffleNet_V2_X0_5_Weights

        from torchbridge.registry.weights import sha256_file

        ckpt = isolated_caches / "torch" / "hub" / "checkpoints"
        ckpt.mkdir(parents=True)
        staging = ckpt / "staging.pth"
        torch.save(tv_model.state_dict(), staging)
        name = f"shufflenetv2_x0.5-{sha256_file(staging)[:8]}.pth"
        staging.rename(ckpt / name)
        member = ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1
        monkeypatch.setattr(member.value, "url", f"https://example.invalid/models/{name}")
        model = torchbridge.load_model(TV_ID, pretrained=True).eval()
        assert torch.equal(model(image), tv_model(image))

    def test_num_classes_replaces_head_and_keeps_body(self, tmp_path, tv_model, isolated_caches):
        """num_classes with pretrained torchvision weights swaps the final layer and keeps the
        body."""
        path = tmp_path / "tv.pth"
        torch.save(tv_model.state_dict(), path)
        model = torchbridge.load_model(TV_ID, weights=path, num_classes=4).eval()
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
        _body_equal(tv_model, model, "fc.")

    def test_random_init_with_num_classes(self):
        """Without weights the builder itself makes the head of the requested size."""
        model = torchbridge.load_model(TV_ID, num_classes=3)
        assert model.fc.out_features == 3

    def test_num_classes_on_a_squeezenet_conv_head(self, tmp_path, isolated_caches):
        """A 1x1-convolution classifier (SqueezeNet) is replaced too, body kept."""
        import torchvision

        reference = torchvision.models.squeezenet1_1().eval()
        path = _save_safetensors(reference, tmp_path / "sq.safetensors")
        model = torchbridge.load_model(
            "torchvision/squeezenet1_1", weights=path, num_classes=5
        ).eval()
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
        _body_equal(reference, model, "classifier.1.")

    def test_num_classes_zero_removes_the_classifier(self, tmp_path, isolated_caches):
        """num_classes=0 gives the features the classifier read, with or without weights."""
        import torchvision

        reference = torchvision.models.squeezenet1_1().eval()
        path = _save_safetensors(reference, tmp_path / "sq.safetensors")
        model = torchbridge.load_model("torchvision/squeezenet1_1", weights=path, num_classes=0)
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 512)
        untrained = torchbridge.load_model(TV_ID, num_classes=0).eval()
        assert isinstance(untrained.fc, torch.nn.Identity)
        assert untrained(torch.randn(2, 3, 64, 64)).shape == (2, 1024)


HUBCONF = '''
dependencies = ["torch"]

import torch

from tinynets import TinyNet


def tiny_net(pretrained=False, num_classes=10):
    """A two-layer perceptron over 8 features."""
    return TinyNet(num_classes)


def tiny_plain():
    """A model that takes no arguments."""
    return TinyNet(2)


def tv_style(*, weights=None, progress=True):
    """An entry point that takes a torchvision-style weights name."""
    net = TinyNet(2)
    net.weights_asked = weights
    return net


def _helper():
    return None
'''

TINYNETS = """
import torch


class TinyNet(torch.nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.body = torch.nn.Linear(8, 16)
        self.head = torch.nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def make_net(pretrained=False):
    \"\"\"Two layers, imported by hubconf.py rather than defined in it.\"\"\"
    return TinyNet(4)
"""


SIDE_EFFECT_HUBCONF = """
dependencies = ["torch"]

from tinynets import TinyNet, make_net

{top}


def side_net(pretrained=False, num_classes=10):
    \"\"\"A net whose repository has a side effect at import.\"\"\"
    return TinyNet(num_classes)
"""


@pytest.fixture
def hub_repo(tmp_path, monkeypatch):
    """A local torch.hub repository with a hubconf.py next to the module it imports."""
    monkeypatch.setattr(hub_source, "_ADDED", {})
    repo = tmp_path / "tinyrepo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(HUBCONF))
    (repo / "tinynets.py").write_text(textwrap.dedent(TINYNETS))
    return repo


class TestHub:
    def test_local_repo_entries_listed(self, hub_repo, isolated_caches):
        """A repo added with add_hub_repo lists its public entry points with their docstrings,
        offline."""
        from torchbridge.registry import add_hub_repo

        assert add_hub_repo(hub_repo) == "tinyrepo"
        ids = [e.id for e in torchbridge.list_models(source="hub")]
        assert ids == ["hub/tinyrepo/tiny_net", "hub/tinyrepo/tiny_plain", "hub/tinyrepo/tv_style"]
        entry = torchbridge.model_info("hub/tinyrepo/tiny_net")
        assert "two-layer perceptron" in entry.description and entry.pretrained
        assert not torchbridge.model_info("hub/tinyrepo/tiny_plain").pretrained

    @pytest.mark.parametrize("name", ["a/b", "x/"])
    def test_add_hub_repo_refuses_a_bad_name(self, hub_repo, isolated_caches, name):
        """A repository's name is one id part: one with '/' is refused, typed."""
        from torchbridge.errors import RegistryArgumentError
        from torchbridge.registry import add_hub_repo

        with pytest.raises(RegistryArgumentError, match="name="):
            add_hub_repo(hub_repo, name=name)
        assert not any(e.id.startswith(f"hub/{name}/") for e in torchbridge.list_models())

    def test_local_repo_entry_loaded(self, hub_repo, isolated_caches):
        """An entry loads through torch.hub's local loader, with num_classes passed to it."""
        from torchbridge.registry import add_hub_repo

        add_hub_repo(hub_repo, name="mine", trust_repo=True)
        model = torchbridge.load_model("hub/mine/tiny_net", num_classes=3)
        assert model(torch.randn(2, 8)).shape == (2, 3)

    def test_weights_round_trip_and_head(self, hub_repo, tmp_path, isolated_caches):
        """weights= loads a saved state into a hub model; num_classes then swaps only the head."""
        from torchbridge.registry import add_hub_repo

        add_hub_repo(hub_repo, trust_repo=True)
        reference = torchbridge.load_model("hub/tinyrepo/tiny_net").eval()
        path = _save_safetensors(reference, tmp_path / "tiny.safetensors")
        x = torch.randn(4, 8)
        model = torchbridge.load_model("hub/tinyrepo/tiny_net", weights=path).eval()
        assert torch.equal(model(x), reference(x))
        headed = torchbridge.load_model("hub/tinyrepo/tiny_net", weights=path, num_classes=2)
        assert headed(x).shape == (4, 2)
        _body_equal(reference, headed, "head.")

    def test_repos_from_env_and_hub_cache(self, hub_repo, isolated_caches, monkeypatch):
        """Repos in $TORCHBRIDGE_HUB_REPOS and in torch.hub's cache folder are listed without
        add_hub_repo."""
        import shutil

        monkeypatch.setenv("TORCHBRIDGE_HUB_REPOS", str(hub_repo))
        cached = isolated_caches / "torch" / "hub" / "owner_repo_main"
        shutil.copytree(hub_repo, cached)
        ids = {e.id for e in torchbridge.list_models(source="hub")}
        assert {"hub/tinyrepo/tiny_net", "hub/owner_repo_main/tiny_net"} <= ids
        assert torchbridge.load_model("hub/owner_repo_main/tiny_plain", trust_repo=True)(
            torch.randn(1, 8)
        ).shape == (1, 2)

    def test_broken_repos_list_without_running_and_fail_on_load(
        self, hub_repo, tmp_path, isolated_caches
    ):
        """A hubconf.py that does not parse is skipped with a warning; one whose imports fail
        still lists (nothing runs), and loading from it names the import that failed."""
        from torchbridge.registry import add_hub_repo

        unparsable = tmp_path / "unparsable"
        unparsable.mkdir()
        (unparsable / "hubconf.py").write_text("def entry(:\n")
        missing = tmp_path / "missing"
        missing.mkdir()
        (missing / "hubconf.py").write_text(
            "import not_a_real_module_xyz\n\n\ndef entry():\n    return None\n"
        )
        for repo in (hub_repo, unparsable, missing):
            add_hub_repo(repo)
        with pytest.warns(UserWarning, match="unparsable"):
            ids = {e.id for e in torchbridge.list_models(source="hub")}
        assert {"hub/tinyrepo/tiny_net", "hub/missing/entry"} <= ids
        assert not any(i.startswith("hub/unparsable/") for i in ids)
        with pytest.raises(RegistryError, match="not_a_real_module_xyz"):
            torchbridge.load_model("hub/missing/entry", trust_repo=True)

    def test_weights_style_entry_gets_default_weights(self, hub_repo, isolated_caches):
        """pretrained=True on an entry taking weights= asks it for "DEFAULT", or the name given."""
        from torchbridge.registry import add_hub_repo

        add_hub_repo(hub_repo, trust_repo=True)
        assert torchbridge.load_model("hub/tinyrepo/tv_style").weights_asked is None
        model = torchbridge.load_model("hub/tinyrepo/tv_style", pretrained=True)
        assert model.weights_asked == "DEFAULT"
        named = torchbridge.load_model("hub/tinyrepo/tv_style", pretrained=True, entry_weights="V2")
        assert named.weights_asked == "V2"

    @pytest.mark.parametrize("effect", ["writes", "raises"])
    def test_listing_runs_no_repository_code(self, tmp_path, isolated_caches, monkeypatch, effect):
        """list, search and info read hubconf.py without running it (its top-level side
        effect does not happen, entry points and docstrings are still read); load runs it."""
        from torchbridge.registry import add_hub_repo

        monkeypatch.setattr(hub_source, "_ADDED", {})
        marker = tmp_path / "ran.txt"
        repo = tmp_path / "sidefx"
        repo.mkdir()
        (repo / "tinynets.py").write_text(textwrap.dedent(TINYNETS))
        top = (
            f"open({str(marker)!r}, 'w').write('ran')"
            if effect == "writes"
            else "raise RuntimeError('hubconf ran at import')"
        )
        (repo / "hubconf.py").write_text(SIDE_EFFECT_HUBCONF.format(top=top))
        add_hub_repo(repo)
        listed = sorted(e.id for e in torchbridge.list_models(source="hub"))
        assert listed == ["hub/sidefx/make_net", "hub/sidefx/side_net"]
        assert torchbridge.search_models("side effect net")[0].id == "hub/sidefx/side_net"
        info = torchbridge.model_info("hub/sidefx/make_net")
        assert "Two layers, imported" in info.description and info.pretrained
        assert not marker.exists()
        if effect == "writes":
            model = torchbridge.load_model("hub/sidefx/side_net", num_classes=3, trust_repo=True)
            assert model(torch.randn(2, 8)).shape == (2, 3) and marker.exists()
        else:
            with pytest.raises(RegistryError, match="hubconf ran at import"):
                torchbridge.load_model("hub/sidefx/side_net", trust_repo=True)

    def test_entry_points_are_read_through_imports(self, tmp_path):
        """Static reading follows imports into the repository's modules (a package, a star
        import, __all__), keeps functions, aliases and partials, and leaves out classes, modules
        and values; a name from a module it cannot read is kept when it looks like a function."""
        from torchbridge.registry.sources._hubconf import read_entry_points

        package = tmp_path / "pkg"
        package.mkdir()
        (package / "__init__.py").write_text(
            '__all__ = ["net_a", "NetClass"]\nfrom .nets import *\n'
        )
        (package / "nets.py").write_text(
            "def net_a(pretrained=False, *, depth=2, **kw):\n"
            '    """Net A.\n\n    More text."""\n\n\n'
            "def net_b():\n    pass\n\n\n"
            "class NetClass:\n    pass\n"
        )
        (tmp_path / "hubconf.py").write_text(
            "import functools\nimport os\n"
            "from pkg import NetClass, net_a, nets\n"
            "from missing_pkg_xyz import MaybeClass, maybe_fn\n"
            "alias = net_a\nlazy = functools.partial(net_a, depth=3)\nvalue = [1]\n"
        )
        points = {p.name: p for p in read_entry_points(tmp_path / "hubconf.py")}
        assert sorted(points) == ["alias", "lazy", "maybe_fn", "net_a"]
        assert points["net_a"].parameters == ("pretrained", "depth", "kw")
        assert points["net_a"].summary == "Net A." and points["alias"].summary == "Net A."
        assert points["lazy"].parameters is None and points["maybe_fn"].parameters is None

    def test_folder_without_hubconf(self, tmp_path):
        """add_hub_repo on a folder without hubconf.py says what is missing."""
        from torchbridge.registry import add_hub_repo

        with pytest.raises(RegistryError, match="hubconf.py"):
            add_hub_repo(tmp_path)

    def test_pretrained_on_entry_without_weights(self, hub_repo, isolated_caches):
        """pretrained=True on an entry that takes no pretrained argument says to pass
        weights=PATH."""
        from torchbridge.registry import add_hub_repo

        add_hub_repo(hub_repo, trust_repo=True)
        with pytest.raises(WeightsNotFoundError, match="weights=PATH"):
            torchbridge.load_model("hub/tinyrepo/tiny_plain", pretrained=True)


class TestLocal:
    def test_register_and_load_back(self, timm_model, image, isolated_caches):
        """A finetuned model registered locally loads back by id with identical outputs."""
        import timm

        finetuned = timm.create_model("test_resnet", num_classes=7).eval()
        entry = torchbridge.register_local_model(
            "my-net",
            finetuned,
            architecture="timm/test_resnet",
            description="finetuned on birds",
            tags=("birds",),
        )
        assert entry.id == "local/my-net" and entry.num_classes == 7
        assert entry.weights.cached and entry.weights.path.endswith("my-net.safetensors")
        assert entry.input_size == torchbridge.model_info("timm/test_resnet").input_size
        assert "local/my-net" in {e.id for e in torchbridge.list_models(source="local")}
        assert torchbridge.search_models("birds")[0].id == "local/my-net"
        loaded = torchbridge.load_model("local/my-net").eval()
        assert torch.equal(loaded(image), finetuned(image))

    def test_sidecar_contents(self, timm_model, isolated_caches):
        """The sidecar names the architecture, weight file, class count and the file's sha256."""
        from torchbridge.registry.weights import sha256_file

        torchbridge.register_local_model(
            "side", timm_model.state_dict(), architecture="timm/test_resnet", num_classes=1000
        )
        folder = isolated_caches / "torchbridge" / "models"
        data = json.loads((folder / "side.json").read_text())
        assert data["architecture"] == "timm/test_resnet"
        assert data["weights"] == "side.safetensors" and data["num_classes"] == 1000
        assert data["sha256"] == sha256_file(folder / "side.safetensors")

    def test_duplicate_name_and_overwrite(self, timm_model, isolated_caches):
        """Registering a name twice fails unless overwrite=True."""
        torchbridge.register_local_model("dup", timm_model, architecture="timm/test_resnet")
        with pytest.raises(DuplicateModelError, match="overwrite=True"):
            torchbridge.register_local_model("dup", timm_model, architecture="timm/test_resnet")
        torchbridge.register_local_model(
            "dup", timm_model, architecture="timm/test_resnet", overwrite=True
        )

    def test_unknown_architecture(self, timm_model, isolated_caches):
        """An architecture that is not a registry id is an UnknownModelError with suggestions."""
        with pytest.raises(UnknownModelError) as info:
            torchbridge.register_local_model("x", timm_model, architecture="timm/test_resnett")
        assert "timm/test_resnet" in info.value.suggestions

    def test_custom_directory_and_new_head(self, tmp_path, timm_model, isolated_caches):
        """A model saved in another folder is found there; num_classes on load swaps only the
        head."""
        torchbridge.register_local_model(
            "elsewhere", timm_model, architecture="timm/test_resnet", directory=tmp_path / "models"
        )
        assert (tmp_path / "models" / "elsewhere.safetensors").is_file()
        model = torchbridge.load_model("local/elsewhere", num_classes=2).eval()
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)
        _body_equal(timm_model, model, "fc.")

    def test_dropped_in_pth_with_sidecar(self, tv_model, image, isolated_caches):
        """A .pth plus a hand-written sidecar in the models folder is a loadable local model."""
        folder = isolated_caches / "torchbridge" / "models"
        folder.mkdir(parents=True)
        torch.save(tv_model.state_dict(), folder / "shuffle.pth")
        (folder / "shuffle.json").write_text(
            json.dumps({"architecture": TV_ID, "num_classes": 1000})
        )
        assert torchbridge.model_info("local/shuffle").weights.filename == "shuffle.pth"
        model = torchbridge.load_model("local/shuffle").eval()
        assert torch.equal(model(image), tv_model(image))

    def test_tampered_weights_fail_the_sidecar_checksum(self, timm_model, isolated_caches):
        """A local weight file changed after registration is a ChecksumError."""
        entry = torchbridge.register_local_model(
            "tamper", timm_model, architecture="timm/test_resnet"
        )
        from safetensors.torch import save_file

        state = {k: v.clone() for k, v in timm_model.state_dict().items()}
        state["fc.bias"] += 1
        save_file(state, entry.weights.path)
        with pytest.raises(ChecksumError):
            torchbridge.load_model("local/tamper")

    def test_bad_names_and_values(self, timm_model, isolated_caches):
        """Names with a slash and values that are not tensors are refused with a clear error."""
        from torchbridge.errors import InvalidModelIdError

        with pytest.raises(InvalidModelIdError, match="not a local model name"):
            torchbridge.register_local_model("a/b", timm_model, architecture="timm/test_resnet")
        with pytest.raises(TypeError, match="tensors"):
            torchbridge.register_local_model("c", {"w": [1, 2]}, architecture="timm/test_resnet")


DOWNLOADING_HUBCONF = '''
import torch


def fetcher(pretrained=False):
    """An entry point that downloads its own weights when asked for them."""
    net = torch.nn.Linear(2, 2)
    if pretrained:
        url = "https://example.invalid/weights/fetcher-0123abcd.pth"
        net.load_state_dict(torch.hub.load_state_dict_from_url(url, progress=False))
    return net
'''


def test_offline_hub_entry_download_fails_at_once(tmp_path, isolated_caches, monkeypatch):
    """Offline, an entry point that downloads its own weights fails at once, naming where the file goes."""
    import time

    from torchbridge.errors import WeightsNotFoundError
    from torchbridge.registry import add_hub_repo

    monkeypatch.setattr(hub_source, "_ADDED", {})
    repo = tmp_path / "fetchrepo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(DOWNLOADING_HUBCONF)
    add_hub_repo(repo, trust_repo=True)
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="fetcher-0123abcd.pth") as info:
        torchbridge.load_model("hub/fetchrepo/fetcher", pretrained=True)
    assert time.perf_counter() - start < 5
    assert str(isolated_caches / "torch" / "hub" / "checkpoints") in str(info.value)
    assert torchbridge.load_model("hub/fetchrepo/fetcher")(torch.ones(1, 2)).shape == (1, 2)
