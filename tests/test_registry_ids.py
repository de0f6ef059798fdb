"""Ids are names, and sidecars name files in their own folder (NOTE [ids are names],
NOTE [sidecars stay in their folder]): nothing outside the registry's folders is read."""

from __future__ import annotations

import json

import pytest
import torch

import torchbridge
from torchbridge import memory
from torchbridge.cli import main
from torchbridge.errors import (
    BrokenEntryError,
    InvalidModelIdError,
    TorchBridgeError,
    UnknownModelError,
)
from torchbridge.registry.core import get_registry
from torchbridge.registry.sources.local_source import LocalSource


def _net():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _local_model(folder, name, net, **sidecar):
    """Weights and a sidecar for ``name`` in ``folder``, written by hand."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(net.state_dict(), str(folder / f"{name}.safetensors"))
    data = {"architecture": "torchvision/resnet18", "weights": f"{name}.safetensors", **sidecar}
    (folder / f"{name}.json").write_text(json.dumps(data))
    return folder / f"{name}.json"


@pytest.fixture
def home(isolated_caches):
    """The default models folder, and a folder outside every registry folder holding a
    model `evil` that a path-like id would reach."""
    get_registry().refresh()
    models = isolated_caches / "torchbridge" / "models"
    models.mkdir(parents=True)
    elsewhere = isolated_caches / "elsewhere"
    _local_model(elsewhere, "evil", _net())
    yield {"models": models, "elsewhere": elsewhere, "root": isolated_caches}
    get_registry().refresh()


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


class TestIds:
    @pytest.mark.parametrize(
        "make_id",
        [
            lambda h: "local/../../elsewhere/evil",
            lambda h: "local/../elsewhere/evil",
            lambda h: "local/" + str(h["elsewhere"] / "evil"),  # local//abs/path/evil
            lambda h: "local/./evil",
            lambda h: "local/evil\x00",
            lambda h: "local/ev\\il",
            lambda h: "local/" + "a" * 600,
            lambda h: "hf/../../elsewhere/evil",
            lambda h: "hub//evil/net",
        ],
    )
    def test_path_like_ids_are_refused_before_the_filesystem(self, home, monkeypatch, make_id):
        """model_info and load_model of an id that is a path raise InvalidModelIdError (an
        UnknownModelError) without a source looking at any folder."""
        model_id = make_id(home)

        def no_disk(self):
            raise AssertionError("a folder was searched for a path-like id")

        monkeypatch.setattr(LocalSource, "directories", no_disk)
        with memory.expect_baseline():
            with pytest.raises(InvalidModelIdError, match="not a model id") as info:
                torchbridge.model_info(model_id)
            with pytest.raises(InvalidModelIdError):
                torchbridge.load_model(model_id)
        assert isinstance(info.value, UnknownModelError) and info.value.model_id == model_id
        assert len(str(info.value)) < 400 and "\n" not in str(info.value)

    @pytest.mark.parametrize("name", ["x" * 201, "-x", ".hidden", "a b", "é"])
    def test_local_names_are_file_names(self, home, name):
        """A local name that no register_local_model could write (too long, a leading '-' or
        '.', a space, a non-ASCII letter) is an InvalidModelIdError."""
        with pytest.raises(InvalidModelIdError, match="not a local model name"):
            torchbridge.model_info(f"local/{name}")

    def test_long_hf_name_is_no_repo(self, home):
        """An hf/ name longer than a Hub repo id can be is unknown, not a remote entry."""
        with pytest.raises(UnknownModelError):
            torchbridge.model_info("hf/" + "a" * 300)

    @pytest.mark.parametrize("model_id", ["local/" + "a" * 300, "local/../../etc/passwd"])
    @pytest.mark.parametrize("as_json", [False, True])
    def test_command_line_says_one_line(self, home, capsys, model_id, as_json):
        """`torchbridge info` of an over-long or path-like id exits 1 with one line (or one
        JSON error), no traceback."""
        code = main(["info", model_id, *(["--json"] if as_json else [])])
        out, err = capsys.readouterr()
        assert code == 1
        if as_json:
            assert json.loads(out)["error"] == "InvalidModelIdError"
        else:
            assert err.startswith("error: ") and err.count("\n") == 1 and out == ""


class TestSidecars:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("weights", "ABSOLUTE"),
            ("weights", "../elsewhere/evil.safetensors"),
            ("weights", "LINK"),
            ("weights", "."),
            ("weights", 5),
            ("onnx", "../elsewhere/evil.onnx"),
            ("hf_folder", "../elsewhere"),
        ],
    )
    def test_fields_pointing_outside_are_refused(self, home, field, value):
        """A sidecar whose weights, onnx or hf_folder leaves its folder (an absolute path,
        '..', a symbolic link out) is a BrokenEntryError naming it: not listed, not loaded."""
        outside = home["elsewhere"] / "evil.safetensors"
        if value == "ABSOLUTE":
            value = str(outside)
        elif value == "LINK":
            (home["models"] / "link.safetensors").symlink_to(outside)
            value = "link.safetensors"
        sidecar = _local_model(home["models"], "mine", _net())
        data = json.loads(sidecar.read_text())
        data[field] = value
        sidecar.write_text(json.dumps(data))
        with pytest.warns(UserWarning, match="mine.json"):
            assert "local/mine" not in {e.id for e in torchbridge.list_models(source="local")}
        with memory.expect_baseline():
            with pytest.raises(BrokenEntryError, match=field) as info:
                torchbridge.model_info("local/mine")
            with pytest.raises(BrokenEntryError):
                torchbridge.load_model("local/mine")
        assert info.value.path == str(sidecar)

    def test_a_link_inside_the_folder_is_followed(self, home):
        """A symbolic link to a file in the same folder is a file of that folder: it loads."""
        import timm

        net = timm.create_model("test_resnet", num_classes=4).eval()
        _local_model(home["models"], "linked", net, architecture="timm/test_resnet")
        (home["models"] / "linked.safetensors").rename(home["models"] / "real.safetensors")
        (home["models"] / "linked.safetensors").symlink_to(home["models"] / "real.safetensors")
        model = torchbridge.load_model("local/linked").eval()
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(model(x), net(x))


class TestRegisterNames:
    @pytest.mark.parametrize(
        "name",
        ["../evil", "a/b", "/tmp/evil", "", "a\x00b", "a" * 300, ".hidden", "x y", 5, None],
    )
    @pytest.mark.parametrize("what", ["state_dict", "onnx"])
    def test_bad_names_write_nothing(self, home, name, what):
        """register_local_model with a name that is not a file name raises InvalidModelIdError
        (a TorchBridgeError and a ValueError) and leaves every folder as it was."""
        before = _files(home["root"])
        module = _net().state_dict() if what == "state_dict" else str(home["root"] / "m.onnx")
        with pytest.raises(InvalidModelIdError, match="not a local model name") as info:
            torchbridge.register_local_model(name, module, architecture="torchvision/resnet18")
        assert isinstance(info.value, (TorchBridgeError, ValueError))
        assert _files(home["root"]) == before
