"""One malformed file never breaks the registry (NOTE [broken entries]).

A broken local sidecar, Hugging Face ``config.json`` or ``hubconf.py`` is skipped
with one warning naming it, by every listing (Python, command line, Julia rows);
every other entry still lists; ``model_info``/``load_model`` of its id raise a
``BrokenEntryError`` naming the file and what is wrong; ``torchbridge doctor``
shows it.
"""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import torchbridge
from torchbridge import julia_support as jl
from torchbridge import memory
from torchbridge.cli import main
from torchbridge.cli.registry_commands import doctor_report
from torchbridge.errors import BrokenEntryError, WeightsNotFoundError
from torchbridge.registry.core import get_registry
from torchbridge.registry.sources import hub_source

DEEP_JSON = "[" * 100_000 + "]" * 100_000

LOCAL = {  # sidecar fields -> what the error says
    "num_classes": ({"num_classes": "ten"}, "num_classes must be an int"),
    "tags": ({"tags": 5}, "tags must be a list of strings"),
    "input_size": ({"input_size": {"a": 1}}, "input_size must be a list of positive ints"),
    "mean": ({"mean": "0.5"}, "mean must be a list of finite numbers"),
    "architecture": ({"architecture": 3}, "architecture must be a registry id"),
    "metadata": ({"metadata": 5}, "metadata must be a JSON object"),
    "license": ({"license": ["mit"]}, "license must be a str"),
    "deep": (DEEP_JSON, "nested too deeply"),
    "not json": ("{'architecture': 'timm/x'", "not valid JSON"),
}

HF = {  # config.json fields -> what the error says
    "architectures": ({"architectures": 3}, "architectures must be a list of class names"),
    "num_labels": ({"num_labels": "ten", "id2label": None}, "num_labels must be an int"),
    "deep": (DEEP_JSON, "nested too deeply"),
    "not json": ('{"model_type": ', "not valid JSON"),
}

HUB = {  # hubconf.py -> what the error says
    "deep unary": ("x = " + "-" * 100_000 + "1\n\ndef entry():\n    pass\n", "nested too deeply"),
    "deep sum": ("x = " + "1+" * 100_000 + "1\n\ndef entry():\n    pass\n", "nested too deeply"),
    "syntax": ("def entry(:\n    pass\n", "does not parse"),
}

GOOD_HUBCONF = '''
import torch


def good_net(pretrained=False):
    """A repository that reads fine."""
    return torch.nn.Linear(2, 2)
'''


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny BERT saved once for the module (each test lays it out in its own cache)."""
    pytest.importorskip("transformers")
    from hf_models import make_bert

    folder = tmp_path_factory.mktemp("bert") / "bert"
    make_bert(folder)
    return folder


@pytest.fixture
def places(tmp_path, isolated_caches, monkeypatch, bert):
    """A models folder, a Hugging Face cache and hub repos, each with one good entry."""
    from safetensors.torch import save_file

    from hf_models import cache_repo

    monkeypatch.setattr(hub_source, "_ADDED", {})
    monkeypatch.delenv("TORCHBRIDGE_HF_DIRS", raising=False)
    models = isolated_caches / "torchbridge" / "models"
    models.mkdir(parents=True)
    net = torch.nn.Linear(4, 2)
    save_file(net.state_dict(), str(models / "good.safetensors"))
    (models / "good.json").write_text(json.dumps({"architecture": "timm/test_resnet"}))
    hf_hub = isolated_caches / "hf" / "hub"
    cache_repo(hf_hub, "test/good-bert", bert)
    good_repo = tmp_path / "goodrepo"
    good_repo.mkdir()
    (good_repo / "hubconf.py").write_text(textwrap.dedent(GOOD_HUBCONF))
    hub_source.add_hub_repo(good_repo)
    # every file here is new (its own tmp path), so no source has it cached: no refresh,
    # which would rebuild timm's table for each case
    return {"models": models, "hf_hub": hf_hub, "bert": bert, "tmp": tmp_path}


def _break(places, kind, content):
    """Write the broken file of `kind`; return (its id, its path)."""
    if kind == "local":
        path = places["models"] / "broken.json"
        data = {"architecture": "timm/test_resnet", "weights": "good.safetensors"}
        path.write_text(content if isinstance(content, str) else json.dumps({**data, **content}))
        return "local/broken", path
    if kind == "hf":
        from hf_models import cache_repo

        snap = cache_repo(places["hf_hub"], "test/broken", places["bert"])
        path = snap / "config.json"
        if isinstance(content, str):
            path.write_text(content)
        else:
            config = json.loads(path.read_text())
            config.update(content)
            path.write_text(json.dumps(config))
        return "hf/test/broken", path
    repo = places["tmp"] / "brokenrepo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(content)
    hub_source.add_hub_repo(repo)
    return "hub/brokenrepo/entry", repo / "hubconf.py"


CASES = [
    *(pytest.param("local", *LOCAL[k], id=f"local-{k}") for k in LOCAL),
    *(pytest.param("hf", *HF[k], id=f"hf-{k}") for k in HF),
    *(pytest.param("hub", *HUB[k], id=f"hub-{k}") for k in HUB),
]
GOOD = {"local/good", "hf/test/good-bert", "hub/goodrepo/good_net"}


@pytest.mark.parametrize(("kind", "content", "says"), CASES)
def test_one_broken_file_is_skipped_and_named(places, capsys, kind, content, says):
    """Listing, search, the command line and the Julia rows skip the broken entry with one
    warning naming its file and list every other entry; its id raises BrokenEntryError."""
    model_id, path = _break(places, kind, content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = {e.id for e in torchbridge.list_models()}
        again = {e.id for e in torchbridge.list_models()}
        found = [e.id for e in torchbridge.search_models("good", limit=50)]
    named = [w for w in caught if str(path) in str(w.message)]
    assert len(named) == 1, [str(w.message) for w in caught]
    assert says in str(named[0].message)
    assert GOOD <= ids and model_id not in ids and ids == again
    assert GOOD & set(found)

    with memory.expect_baseline():
        with pytest.raises(BrokenEntryError, match=says) as info:
            torchbridge.model_info(model_id)
        with pytest.raises(BrokenEntryError):
            torchbridge.load_model(model_id)
    assert info.value.path == str(path) and str(path) in str(info.value)

    rows = {row["id"] for row in jl.registry_rows()}
    assert GOOD <= rows and model_id not in rows
    capsys.readouterr()
    assert main(["list", "--source", kind, "--json"]) == 0  # one source: a short table
    listed = {e["id"] for e in json.loads(capsys.readouterr().out)}
    assert {i for i in GOOD if i.startswith(kind)} <= listed and model_id not in listed
    assert main(["list", "--source", kind]) == 0
    assert main(["search", "good", "--json"]) == 0
    capsys.readouterr()
    assert main(["info", model_id]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and err.count("\n") == 1

    broken = doctor_report()["broken_entries"]
    assert [b["file"] for b in broken] == [str(path)]
    assert says in broken[0]["problem"]


def test_a_fixed_file_lists_again(places):
    """Once the file is fixed, its entry lists and loads, and doctor no longer shows it."""
    model_id, path = _break(places, "local", {"num_classes": "ten"})
    with pytest.warns(UserWarning, match="broken.json"):
        assert model_id not in {e.id for e in torchbridge.list_models(source="local")}
    data = json.loads(path.read_text())
    data["num_classes"] = 0
    path.write_text(json.dumps(data))
    import os

    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10_000_000))
    assert torchbridge.model_info(model_id).num_classes == 0
    assert doctor_report()["broken_entries"] == []


def test_a_source_whose_listing_fails_is_skipped(places):
    """A plugin source whose entries() raises is skipped with one warning; the others list."""
    from torchbridge.registry import ModelSource

    class Failing(ModelSource):
        name = "failing"

        def entries(self):
            raise RuntimeError("the plugin is broken")

    registry = get_registry()
    registry.register_source(Failing(), replace=True)
    try:
        with pytest.warns(UserWarning, match="the plugin is broken"):
            ids = {e.id for e in torchbridge.list_models()}
        assert GOOD <= ids
    finally:
        registry._sources.pop("failing", None)


def test_entries_check_their_fields():
    """A ModelEntry of any source refuses ill-typed fields, naming them, and keeps lists and
    numbers in their declared types."""
    from torchbridge.registry import ModelEntry

    entry = ModelEntry(
        id="x/y", source="x", name="y", input_size=[3, 8, 8], mean=[0, 1, 2], tags=["a"]
    )
    assert entry.input_size == (3, 8, 8) and entry.julia_input_size == (8, 8, 3)
    assert entry.mean == (0.0, 1.0, 2.0) and entry.tags == ("a",)
    for field, value in (
        ("num_classes", -1),
        ("num_classes", True),
        ("input_size", [3, 0]),
        ("std", [float("inf")]),
        ("tags", "abc"),
        ("pretrained", "yes"),
        ("task", None),
    ):
        with pytest.raises((TypeError, ValueError), match=field):
            ModelEntry(id="x/y", source="x", name="y", **{field: value})


@pytest.mark.parametrize(
    ("content", "error", "says"),
    [
        ("{not json", BrokenEntryError, "not valid JSON"),
        ("[1, 2]", BrokenEntryError, "a JSON list, not an object"),
        (None, WeightsNotFoundError, "config.json is not there"),
    ],
)
def test_a_saved_transformers_folder_with_a_broken_config(places, content, error, says):
    """A local transformers model whose config.json was damaged or removed after saving is a
    typed error naming the file, not json's or Python's own."""
    model = torchbridge.load_model("hf/test/good-bert", pretrained=True)
    torchbridge.register_local_model("mybert", model, architecture="hf/test/good-bert")
    config = Path(torchbridge.model_info("local/mybert").metadata["hf_folder"]) / "config.json"
    if content is None:
        config.unlink()
    else:
        config.write_text(content)
    with pytest.raises(error, match=says) as info:
        torchbridge.load_model("local/mybert")
    assert str(config) in str(info.value)


@pytest.mark.parametrize("kind", ["fifo.onnx", "fifo.json", "zero.onnx", "zero.json", "out.onnx"])
def test_files_that_are_no_files_are_skipped_unread(places, tmp_path, capsys, kind):
    """A pipe (which would block every listing), a link to a device (read without end) or a
    link out of the models folder is skipped with one warning and never opened; the other
    entries list, and model_info of its id is a BrokenEntryError."""
    import os

    name, suffix = kind.split(".")
    path = places["models"] / kind
    if name == "fifo":
        os.mkfifo(path)
    elif name == "zero":
        path.symlink_to("/dev/zero")
    else:
        outside = tmp_path / "elsewhere.onnx"
        outside.write_bytes(b"not read")
        path.symlink_to(outside)
    with pytest.warns(UserWarning, match=f"{kind}.*(regular file|outside its folder)"):
        ids = {e.id for e in torchbridge.list_models()}
    assert GOOD <= ids and f"local/{name}" not in ids
    with pytest.raises(BrokenEntryError, match="nothing was read"):
        torchbridge.model_info(f"local/{name}")
