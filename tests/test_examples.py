"""Every Python example and the demo run end to end (short settings), so they cannot rot."""

from __future__ import annotations

import importlib.util
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestDemo:
    def test_quick_demo_pretrains_finetunes_and_exports(self, isolated_caches, capsys):
        """The demo trains, registers with input size and normalisation, finetunes, exports."""
        from torchbridge import demo

        out = isolated_caches / "demo"
        assert demo.main(["--quick", "--out", str(out), "--no-progress"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["pretrain"]["registered_as"] == "local/digits-0to4"
        finetune = summary["finetune"]
        assert finetune["model"] == "local/digits-0to4"
        assert finetune["registered_as"] == "local/digits-5to9"
        assert finetune["accuracy_after"] > finetune["accuracy_before"]
        for step in ("pretrain", "finetune"):  # 16x16 pixels normalised to [-1, 1]
            assert summary[step]["input_size"] == [3, 16, 16]
            assert summary[step]["mean"] == [0.5] * 3 and summary[step]["std"] == [0.5] * 3
        sidecar = json.loads((out / "models" / "digits-5to9.json").read_text())
        assert sidecar["input_size"] == [3, 16, 16] and sidecar["std"] == [0.5] * 3
        bridged = summary["bridge"]  # one step of the path Julia's AD takes
        assert bridged["julia_size"] == [16, 16, 3, 32] and bridged["torch_shape"] == [
            32,
            3,
            16,
            16,
        ]
        assert bridged["zero_copy"] and bridged["ledger_at_baseline"]
        assert bridged["max_grad_diff"] < 1e-5 and bridged["logits_shape"] == [32, 5]
        export = summary["export"]
        assert export["max_abs_diff"] < 1e-4 and export["batch_sizes_checked"] == [1, 3]
        assert export["onnx_accuracy"] == pytest.approx(finetune["accuracy_after"], abs=0.02)
        assert (out / "digits-5to9.onnx").is_file()
        assert sorted(p.suffix for p in (out / "models").iterdir()) == [
            ".json",
            ".json",
            ".safetensors",
            ".safetensors",
        ]
        printed = capsys.readouterr().out
        assert "before" in printed and "after finetuning" in printed and str(out) in printed

    def test_missing_pretrained_weights_fail_cleanly(self, isolated_caches, capsys):
        """MODEL naming weights that are not on this machine ends with a message and exit code 1."""
        from torchbridge import demo

        code = demo.main(
            [
                "--quick",
                "--out",
                str(isolated_caches / "d"),
                "--model",
                "timm/resnet10t",
                "--no-progress",
            ]
        )
        assert code == 1
        assert "weights" in capsys.readouterr().err


class TestFinetuneExample:
    def test_finetune_py_trains_and_exports(self, isolated_caches):
        """examples/finetune.py finetunes a registry model and writes a verified ONNX file."""
        script = load_script(EXAMPLES / "finetune.py")
        out = isolated_caches / "ft"
        result = script.main(
            ["--model", "timm/test_resnet", "--scratch", "--quick", "--out", str(out)]
        )
        assert result["history"].checkpoint.id == "local/digits-finetuned"
        assert result["report"].max_abs_diff < 1e-4
        assert (out / "digits-finetuned.onnx").is_file()


class TestMixedNotebook:
    def test_notebook_is_in_sync_with_its_twin(self):
        """The .ipynb holds exactly the cells of its jupytext .py twin."""
        jupytext = pytest.importorskip("jupytext")
        from_py = jupytext.read(EXAMPLES / "mixed_notebook.py")
        from_ipynb = jupytext.read(EXAMPLES / "mixed_notebook.ipynb")
        assert [(c.cell_type, c.source) for c in from_py.cells] == [
            (c.cell_type, c.source) for c in from_ipynb.cells
        ]
        julia_cells = [c for c in from_ipynb.cells if "julia" in c.metadata.get("tags", [])]
        assert len(julia_cells) == 1 and "if JULIA:" in julia_cells[0].source

    def test_notebook_runs_without_julia(self, isolated_caches, monkeypatch):
        """Without Julia the notebook runs end to end and never imports juliacall."""
        monkeypatch.setenv("NOTEBOOK_QUICK", "1")
        monkeypatch.setenv("NOTEBOOK_OUT", str(isolated_caches / "nb"))
        monkeypatch.delenv("PYTHON_JULIAPKG_EXE", raising=False)
        monkeypatch.setenv("PATH", "/nonexistent")  # no julia on PATH
        monkeypatch.delitem(sys.modules, "juliacall", raising=False)
        scope = runpy.run_path(str(EXAMPLES / "mixed_notebook.py"))
        assert scope["JULIA"] is None
        assert "juliacall" not in sys.modules
        assert tuple(scope["images"].shape[1:]) == (3, 16, 16)
        assert scope["images"].data_ptr() == scope["whcn"].ctypes.data  # no copy
        assert scope["report"].max_abs_diff < 1e-4
        assert (isolated_caches / "nb" / "digits.onnx").is_file()


def _code_lines(text: str) -> list[str]:
    """Julia code lines without comments or indentation, blank lines dropped."""
    lines = []
    for line in text.splitlines():
        code = line.split(" #", 1)[0].strip()
        if code and not code.startswith("#"):
            lines.append(code)
    return lines


def test_tutorial_julia_blocks_are_the_example_the_julia_suite_runs():
    """Every Julia block of docs/tutorial.md is, line for line and in order, part of examples/finetune.jl."""
    import re

    root = Path(__file__).resolve().parent.parent
    tutorial = (root / "docs" / "tutorial.md").read_text()
    example = _code_lines((root / "examples" / "finetune.jl").read_text())
    blocks = re.findall(r"```julia\n(.*?)```", tutorial, re.S)
    checked = 0
    for block in blocks:
        if "/path/to/" in block:  # a placeholder path, shown for offline use
            continue
        lines = _code_lines(block)
        start = example.index(lines[0])
        assert example[start : start + len(lines)] == lines, block
        checked += 1
    assert checked >= 5


def test_notebook_imports_juliacall_before_torch():
    """Where Julia is used, juliacall is imported before torch (the other order can crash)."""
    import ast

    root = Path(__file__).resolve().parent.parent
    tree = ast.parse((root / "examples" / "mixed_notebook.py").read_text())
    order = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            order += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            order.append((node.lineno, node.module.split(".")[0]))
    first = {}
    for line, name in sorted(order):
        first.setdefault(name, line)
    assert first["juliacall"] < first["torch"]
    assert first["juliacall"] < first["torchbridge"]


def _section(text: str, title: str) -> str:
    """The text of the ``## title`` section of a Markdown file, up to the next ``## ``."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


class TestFinetuneLargeModel:
    """docs/transformers.md, "Finetune a large model": its code is the examples' code."""

    @pytest.mark.parametrize(
        ("language", "example"), [("julia", "finetune_large.jl"), ("python", "finetune_large.py")]
    )
    def test_docs_blocks_are_the_examples_code(self, language, example):
        """Every block of the section is, line for line and in order, part of its example."""
        import re

        docs = (Path(__file__).resolve().parent.parent / "docs" / "transformers.md").read_text()
        blocks = re.findall(
            rf"```{language}\n(.*?)```", _section(docs, "Finetune a large model"), re.S
        )
        code = _code_lines((EXAMPLES / example).read_text())
        assert blocks
        for block in blocks:
            lines = _code_lines(block)
            start = code.index(lines[0])
            assert code[start : start + len(lines)] == lines, block

    def test_finetune_large_py_runs_on_a_tiny_llama(self, isolated_caches):
        """The Python example trains the adapter alone, saves and restores it, and exports the
        merged model, which onnxruntime checks."""
        pytest.importorskip("peft")
        from hf_models import cache_repo, make_llama
        from torchbridge.registry.core import get_registry

        make_llama(isolated_caches / "llama")
        cache_repo(isolated_caches / "hf" / "hub", "test/tiny-llama", isolated_caches / "llama")
        get_registry().refresh()
        script = load_script(EXAMPLES / "finetune_large.py")
        out = isolated_caches / "lora"
        argv = ["--model", "hf/test/tiny-llama", "--quick", "--epochs", "2", "--eta", "0.02"]
        result = script.main([*argv, "--out", str(out)])
        losses = result["history"]["train_loss"]
        assert losses[-1] < losses[0]
        model = result["model"]
        adapter = [p for p in model.parameters() if p.requires_grad]
        assert result["trainable"] == sum(p.numel() for p in adapter) == 1792
        assert {p.dtype for p in adapter} == {torch.float32}
        assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
        assert (out / "my-lora" / "adapter_model.safetensors").is_file()
        report = result["report"]
        assert report.path.name == "my-lora.onnx" and report.max_abs_diff <= report.tolerance
        get_registry().refresh()
