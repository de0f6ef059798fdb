"""The list, search, info and doctor commands, read back from their --json output."""

from __future__ import annotations

import json
import sys

import pytest

from torchbridge.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_json(capsys):
    """`list PATTERN --source S --json` prints the matching entries as JSON."""
    code, out, _ = run(capsys, "list", "resnet18*", "--source", "timm", "--json")
    data = json.loads(out)
    assert code == 0
    ids = [d["id"] for d in data]
    assert "timm/resnet18" in ids and "timm/resnet18.a1_in1k" in ids
    assert all(i.startswith("timm/resnet18") for i in ids)


def test_list_pretrained_only(capsys):
    """`list --pretrained` keeps only entries with published weights."""
    code, out, _ = run(capsys, "list", "*resnet1*", "--pretrained", "--json")
    data = json.loads(out)
    assert code == 0 and data and all(d["pretrained"] for d in data)


def test_search_json_with_limit(capsys):
    """`search QUERY --limit N --json` prints at most N ranked entries."""
    code, out, _ = run(capsys, "search", "efficientnet b0 imagenet", "--limit", "3", "--json")
    data = json.loads(out)
    assert code == 0 and len(data) == 3
    assert "efficientnet_b0" in data[0]["name"]


def test_info_json(capsys):
    """`info MODEL_ID --json` prints the entry, sizes in both orders."""
    code, out, _ = run(capsys, "info", "timm/resnet18.a1_in1k", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["input_size"] == [3, 224, 224] and data["julia_input_size"] == [224, 224, 3]
    assert data["weights"]["location"] == "hf-hub:timm/resnet18.a1_in1k"
    assert data["feature_channels"] == 512


def test_info_unknown_id(capsys):
    """`info` of an unknown id exits 1 with suggestions, as JSON or as a message on stderr."""
    code, out, _ = run(capsys, "info", "timm/resnt18", "--json")
    data = json.loads(out)
    assert code == 1 and data["error"] == "UnknownModelError"
    assert "timm/resnet18" in data["suggestions"]
    code, out, err = run(capsys, "info", "timm/resnt18")
    assert code == 1 and out == "" and "Did you mean" in err


def test_tables_without_json(capsys):
    """Without --json the commands print readable tables holding the ids."""
    code, out, _ = run(capsys, "search", "resnet50", "--limit", "2")
    assert code == 0 and "timm/resnet50" in out
    code, out, _ = run(capsys, "info", "torchvision/resnet18")
    assert code == 0 and "resnet18-f37072fd.pth" in out and "224x224x3" in out


def test_doctor_json(capsys, isolated_caches, monkeypatch):
    """`doctor --json` reports versions, Julia, caches and offline state, without importing
    juliacall."""
    monkeypatch.setenv("PYTHON_JULIAPKG_EXE", str(isolated_caches / "no-julia-here"))
    code, out, _ = run(capsys, "doctor", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert data["torch"]["cuda_available"] in (True, False)
    assert {"timm", "torchvision", "onnx", "onnxruntime", "juliacall"} <= set(data["packages"])
    assert data["julia"]["PYTHON_JULIAPKG_EXE"].endswith("no-julia-here")
    assert data["caches"]["huggingface_hub"] == str(isolated_caches / "hf" / "hub")
    assert data["caches"]["local_models"] == str(isolated_caches / "torchbridge" / "models")
    assert data["offline"]["offline"] is True
    assert data["sources"]["timm"]["available"] is True
    assert "juliacall" not in sys.modules


@pytest.mark.parametrize("command", ["list", "search", "info", "doctor"])
def test_every_command_takes_json(command):
    """Each registry command accepts --json and sets a func that returns an exit code."""
    from torchbridge.cli import build_parser

    argv = {
        "list": ["list"],
        "search": ["search", "q"],
        "info": ["info", "x/y"],
        "doctor": ["doctor"],
    }
    args = build_parser().parse_args([*argv[command], "--json"])
    assert args.json is True and callable(args.func)
