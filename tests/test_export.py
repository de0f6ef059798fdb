"""ONNX export: one checked file whose onnxruntime outputs match torch, or a clear error."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch

from torchbridge.errors import ExportError, ExportVerificationError
from torchbridge.export import ExportReport, export_onnx

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
timm = pytest.importorskip("timm")

SIZE = (3, 32, 32)


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


class SvdHead(torch.nn.Module):
    """A model using an operation (a singular value decomposition) ONNX cannot express."""

    def forward(self, x):
        return torch.linalg.svd(x.flatten(2)).S


class PythonCounter(torch.nn.Module):
    """A model whose output depends on Python state that the exported graph freezes."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.mean(dim=(2, 3)) * self.calls


@pytest.fixture(scope="module")
def timm_resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=5).eval()


class TestExport:
    def test_timm_resnet_exports_to_one_verified_file(self, timm_resnet, tmp_path):
        """A timm resnet becomes one .onnx file that onnxruntime runs like torch (batch 1, 3)."""
        report = export_onnx(timm_resnet, tmp_path / "resnet.onnx", input_size=SIZE)
        assert isinstance(report, ExportReport)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet.onnx"]
        assert report.external_data is None
        assert report.file_size == (tmp_path / "resnet.onnx").stat().st_size > 1_000_000
        assert report.batch_sizes_checked == (1, 3)
        assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
        assert report.verified_with.startswith("onnxruntime")
        assert report.opset >= 17
        assert [(i.name, i.shape, i.dtype) for i in report.inputs] == [
            ("input", ("batch", 3, 32, 32), "float32")
        ]
        assert [(o.name, o.shape) for o in report.outputs] == [("output", ("batch", 5))]
        x = torch.randn(4, *SIZE)
        with torch.no_grad():
            expected = timm_resnet(x).numpy()
        np.testing.assert_allclose(run_onnx(report.path, x), expected, atol=1e-4)

    def test_fixed_batch(self, tmp_path):
        """Without dynamic_batch the graph takes batches of one and is checked at batch 1."""
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
        report = export_onnx(model, tmp_path / "m.onnx", input_size=(3, 4), dynamic_batch=False)
        assert report.inputs[0].shape == (1, 3, 4)
        assert report.batch_sizes_checked == (1,)

    def test_mode_is_restored_and_input_size_comes_from_timm(self, tmp_path):
        """A model in train mode is exported in eval mode and handed back in train mode."""
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3),
            torch.nn.BatchNorm2d(4),
            torch.nn.Flatten(),
            torch.nn.LazyLinear(3),
        )
        model(torch.zeros(2, 3, 24, 24))  # materialise the lazy layer
        model.pretrained_cfg = {"input_size": (3, 24, 24)}  # as timm models carry it
        model.train()
        report = export_onnx(model, tmp_path / "t.onnx")
        assert model.training
        assert report.inputs[0].shape == ("batch", 3, 24, 24)

    def test_each_submodule_keeps_its_own_mode(self, tmp_path):
        """A model finetuned with a frozen batch-norm layer (in eval mode inside a model in train
        mode) gets every submodule's mode back, not train mode everywhere."""
        model = torch.nn.Sequential(
            torch.nn.Linear(4, 8),
            torch.nn.BatchNorm1d(8),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(8, 2),
        )
        model.train()
        model[1].eval()
        export_onnx(model, tmp_path / "frozen.onnx", input_size=(4,))
        assert [m.training for m in model.modules()] == [True, True, False, True, True]

    def test_without_verification(self, tmp_path):
        """verify=False checks the file but reports no numerical comparison."""
        model = torch.nn.Linear(3, 2)
        report = export_onnx(model, tmp_path / "l.onnx", input_size=(3,), verify=False)
        assert report.max_abs_diff is None and report.batch_sizes_checked == ()
        assert report.to_dict()["path"] == str(tmp_path / "l.onnx")


class TestFailures:
    def test_unexpressible_operation_is_a_clear_error(self, tmp_path):
        """A model using an op ONNX cannot express raises ExportError naming it, leaving no file."""
        with pytest.raises(ExportError, match=r"aten\._linalg_svd") as info:
            export_onnx(SvdHead(), tmp_path / "svd.onnx", input_size=(3, 4, 4))
        assert not isinstance(info.value, ExportVerificationError)
        assert list(tmp_path.iterdir()) == []

    def test_failed_export_leaves_no_new_folder(self, tmp_path):
        """The folders made for the file are removed again when the export fails; a folder that
        was already there stays."""
        with pytest.raises(ExportError):
            export_onnx(SvdHead(), tmp_path / "new" / "deeper" / "svd.onnx", input_size=(3, 4, 4))
        assert list(tmp_path.iterdir()) == []
        report = export_onnx(torch.nn.Linear(3, 2), tmp_path / "made" / "l.onnx", input_size=(3,))
        assert report.path.is_file()

    def test_numerical_mismatch_removes_the_file(self, tmp_path):
        """When onnxruntime disagrees with torch the export fails and no file is left."""
        with pytest.raises(ExportVerificationError, match="differ by up to"):
            export_onnx(PythonCounter(), tmp_path / "bad.onnx", input_size=(2, 3, 3))
        assert list(tmp_path.iterdir()) == []

    def test_failed_export_keeps_an_earlier_file(self, tmp_path):
        """A failed export does not destroy a file already at the target path."""
        target = tmp_path / "model.onnx"
        target.write_bytes(b"an earlier export")
        with pytest.raises(ExportError):
            export_onnx(SvdHead(), target, input_size=(3, 4, 4))
        assert target.read_bytes() == b"an earlier export"
        assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]

    def test_unknown_input_size(self, tmp_path):
        """A plain module without input_size is refused with the fix in the message."""
        with pytest.raises(ExportError, match="input_size"):
            export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")


class TestRegistryAndCommandLine:
    def test_finetuned_local_model_exports_by_id(self, isolated_caches, capsys):
        """`torchbridge export local/<name> --json` writes a verified file for a local model."""
        import json

        import torchbridge
        from torchbridge.cli import main

        model = timm.create_model("test_resnet", num_classes=3)
        torchbridge.register_local_model("tuned", model, architecture="timm/test_resnet")
        out = isolated_caches / "tuned.onnx"
        code = main(["export", "local/tuned", "-o", str(out), "--input-size", "3,32,32", "--json"])
        report = json.loads(capsys.readouterr().out)
        assert code == 0
        assert report["model_id"] == "local/tuned" and report["path"] == str(out)
        assert report["outputs"][0]["shape"] == ["batch", 3]
        assert report["max_abs_diff"] < 1e-4 and report["batch_sizes_checked"] == [1, 3]
        x = torch.randn(2, *SIZE)
        with torch.no_grad():
            expected = model.eval()(x).numpy()
        np.testing.assert_allclose(run_onnx(out, x), expected, atol=1e-4)

    def test_weights_file_with_its_head_size(self, isolated_caches, capsys):
        """--weights with the file's --num-classes exports exactly the file's model."""
        from safetensors.torch import save_file

        from torchbridge.cli import main

        source = timm.create_model("test_resnet", num_classes=7)
        weights = isolated_caches / "w.safetensors"
        save_file(source.state_dict(), str(weights))
        out = isolated_caches / "w.onnx"
        code = main(
            [
                "export",
                "timm/test_resnet",
                "-o",
                str(out),
                "--weights",
                str(weights),
                "--num-classes",
                "7",
                "--input-size",
                "3,32,32",
            ]
        )
        text = capsys.readouterr().out
        assert code == 0, text
        assert "output output: float32[batch, 7]" in text and "verified with onnxruntime" in text
        x = torch.randn(1, *SIZE)
        with torch.no_grad():
            expected = source.eval()(x).numpy()
        np.testing.assert_allclose(run_onnx(out, x), expected, atol=1e-4)

    def test_missing_weights_exit_with_a_message(self, isolated_caches, capsys):
        """Offline without weights the command exits 1 naming the file it needs, writing nothing."""
        from torchbridge.cli import main

        out = isolated_caches / "none.onnx"
        assert main(["export", "timm/resnet10t", "-o", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error:") and "weights" in err
        assert not out.exists()

    def test_bad_input_size_is_a_usage_error(self, capsys):
        """A malformed --input-size is rejected by the argument parser."""
        from torchbridge.cli import main

        with pytest.raises(SystemExit) as info:
            main(["export", "timm/test_resnet", "-o", "x.onnx", "--input-size", "3,a"])
        assert info.value.code == 2
        assert "3,224,224" in capsys.readouterr().err

    @pytest.mark.parametrize("bad", ["-1", "ten"])
    def test_bad_num_classes_is_a_usage_error(self, capsys, bad):
        """A negative or non-numeric --num-classes is rejected by the argument parser."""
        from torchbridge.cli import main

        with pytest.raises(SystemExit) as info:
            main(["export", "timm/test_resnet", "-o", "x.onnx", "--num-classes", bad])
        assert info.value.code == 2
        assert "number of classes" in capsys.readouterr().err

    def test_num_classes_that_the_weights_lack_is_refused(self, isolated_caches):
        """A --num-classes the weight file lacks would export a random head, so it is refused."""
        from safetensors.torch import save_file

        weights = isolated_caches / "w7.safetensors"
        save_file(timm.create_model("test_resnet", num_classes=7).state_dict(), str(weights))
        out = isolated_caches / "w.onnx"
        with pytest.raises(ExportError, match="random"):
            export_onnx(
                "timm/test_resnet", out, input_size=SIZE, weights=str(weights), num_classes=4
            )
        assert not out.exists()

    def test_num_classes_without_weights_is_refused(self, isolated_caches):
        """A new head without a weight file would be untrained, so it is refused up front."""
        with pytest.raises(ExportError, match="untrained head"):
            export_onnx("timm/test_resnet", isolated_caches / "h.onnx", num_classes=4)
        assert not (isolated_caches / "h.onnx").exists()


class TestOutputPath:
    """An output path that cannot be a file is refused before the model is built: one line
    and exit code 1 from the command line, an ExportError from Python."""

    @pytest.fixture
    def weights(self, isolated_caches):
        from safetensors.torch import save_file

        path = isolated_caches / "w.safetensors"
        save_file(timm.create_model("test_resnet", num_classes=3).state_dict(), str(path))
        return path

    @pytest.mark.parametrize("where", ["under a file", "a folder", "deep under a file"])
    def test_unwritable_output(self, isolated_caches, weights, capsys, monkeypatch, where):
        from torchbridge.cli import main
        from torchbridge.registry.core import ModelRegistry

        blocker = isolated_caches / "a-file"
        blocker.write_text("not a folder")
        folder = isolated_caches / "out"
        folder.mkdir()
        out = {
            "under a file": blocker / "model.onnx",
            "a folder": folder,
            "deep under a file": blocker / "x" / "y" / "model.onnx",
        }[where]
        args = ["export", "timm/test_resnet", "-o", str(out), "--weights", str(weights)]
        args += ["--input-size", "3,32,32"]
        loads = []
        original = ModelRegistry.load_model
        monkeypatch.setattr(
            ModelRegistry,
            "load_model",
            lambda self, *a, **k: loads.append(a) or original(self, *a, **k),
        )
        assert main(args) == 1
        out_text, err = capsys.readouterr()
        assert out_text == "" and err.startswith("error: export_onnx: ") and err.count("\n") == 1
        assert ("is a folder" if where == "a folder" else "is a file, not a folder") in err
        assert loads == []  # refused before the model was built
        assert blocker.read_text() == "not a folder" and list(folder.iterdir()) == []
        assert main([*args, "--json"]) == 1
        assert json.loads(capsys.readouterr().out)["error"] == "ExportError"
        with pytest.raises(ExportError, match="export_onnx"):
            export_onnx("timm/test_resnet", out, weights=str(weights))

    def test_weights_that_are_a_folder(self, isolated_caches, capsys):
        """--weights naming a folder exits 1 with one line saying so."""
        from torchbridge.cli import main

        out = isolated_caches / "m.onnx"
        assert main(["export", "timm/test_resnet", "-o", str(out), "--weights", "."]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a folder, not a weight file" in err
        assert not out.exists()


class DataDependent(torch.nn.Module):
    """A model that branches on a tensor's value, which torch.export cannot trace."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def run_onnx_feed(path, feed: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feed.items()})


def attention_settings(model) -> list:
    return [
        getattr(m.config, "_attn_implementation", None)
        for m in model.modules()
        if hasattr(m, "config")
    ]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A tiny T5, Whisper and Swin (tests/hf_models.py), each in eval mode."""
    pytest.importorskip("transformers")
    from hf_models import make_swin, make_t5, make_whisper

    root = tmp_path_factory.mktemp("hf-models")
    return {
        name: make(root / name)[0].eval()
        for name, make in (("t5", make_t5), ("whisper", make_whisper), ("swin", make_swin))
    }


class TestTransformers:
    """Encoder-decoder, audio and Swin models export and verify, or refuse with what to do."""

    def test_t5_exports_with_its_decoder_input(self, tiny_hf, tmp_path):
        """T5 gets decoder_input_ids beside its token inputs, each with its own dynamic length;
        onnxruntime matches the model (with its own attention) on new lengths."""
        t5 = tiny_hf["t5"]
        before = attention_settings(t5)
        report = export_onnx(t5, tmp_path / "t5.onnx")
        assert [(i.name, i.shape, i.dtype) for i in report.inputs] == [
            ("input_ids", ("batch", "sequence"), "int64"),
            ("attention_mask", ("batch", "sequence"), "int64"),
            ("decoder_input_ids", ("batch", "decoder_sequence"), "int64"),
        ]
        assert [o.name for o in report.outputs] == ["logits", "encoder_last_hidden_state"]
        assert report.outputs[0].shape == ("batch", "decoder_sequence", 64)
        assert report.batch_sizes_checked == (1, 3) and report.max_abs_diff < 1e-4
        assert attention_settings(t5) == before  # the model's attention is its own again
        g = torch.Generator().manual_seed(1)
        feed = {
            "input_ids": torch.randint(0, 64, (2, 7), generator=g),
            "attention_mask": torch.ones(2, 7, dtype=torch.int64),
            "decoder_input_ids": torch.randint(0, 64, (2, 4), generator=g),
        }
        with torch.no_grad():
            expected = t5(**feed, use_cache=False).logits.numpy()
        np.testing.assert_allclose(run_onnx_feed(report.path, feed)[0], expected, atol=1e-4)

    def test_whisper_exports_from_its_config(self, tiny_hf, tmp_path):
        """Whisper's input_features size comes from its config (mel bins, fixed frames), and
        its decoder gets decoder_input_ids; the file matches the model."""
        whisper = tiny_hf["whisper"]
        report = export_onnx(whisper, tmp_path / "whisper.onnx")
        assert [(i.name, i.shape, i.dtype) for i in report.inputs] == [
            ("input_features", ("batch", 8, 32), "float32"),
            ("decoder_input_ids", ("batch", "decoder_sequence"), "int64"),
        ]
        assert report.outputs[0].name == "logits"
        assert report.max_abs_diff < 1e-4 and report.notes == ()
        g = torch.Generator().manual_seed(1)
        feed = {
            "input_features": torch.randn(2, 8, 32, generator=g),
            "decoder_input_ids": torch.randint(0, 64, (2, 5), generator=g),
        }
        with torch.no_grad():
            expected = whisper(**feed, use_cache=False).logits.numpy()
        np.testing.assert_allclose(run_onnx_feed(report.path, feed)[0], expected, atol=1e-4)

    def test_whisper_with_its_input_size(self, tiny_hf, tmp_path):
        """input_size= that Whisper takes exports the same graph."""
        report = export_onnx(tiny_hf["whisper"], tmp_path / "w.onnx", input_size=(8, 32))
        assert report.inputs[0].shape == ("batch", 8, 32) and report.max_abs_diff < 1e-4

    def test_whisper_with_a_wrong_input_size_is_an_export_error(self, tiny_hf, tmp_path):
        """An input_size Whisper does not take is an ExportError carrying Whisper's own
        message and what to pass, not the model's bare ValueError; nothing is written."""
        with pytest.raises(ExportError, match="expects the mel input features to be of length 32"):
            export_onnx(tiny_hf["whisper"], tmp_path / "w.onnx", input_size=(8, 30))
        assert list(tmp_path.iterdir()) == []

    def test_input_size_for_a_text_model_is_refused(self, tiny_hf, tmp_path):
        """input_size= for T5 (token inputs, dynamic lengths) is refused with what to do."""
        with pytest.raises(ExportError, match="takes token ids .* leave it out"):
            export_onnx(tiny_hf["t5"], tmp_path / "t5.onnx", input_size=(8,))
        assert list(tmp_path.iterdir()) == []

    def test_audio_model_without_a_clip_length_says_what_to_pass(self, tmp_path):
        """An audio model whose clip length nothing fixes asks for input_size=(samples,)."""
        from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

        config = Wav2Vec2Config(
            vocab_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            conv_dim=(8, 8),
            conv_stride=(5, 2),
            conv_kernel=(10, 3),
            num_conv_pos_embeddings=4,
            num_conv_pos_embedding_groups=2,
        )
        with pytest.raises(ExportError, match=r"audio model \(its input is input_values\)") as info:
            export_onnx(Wav2Vec2ForCTC(config).eval(), tmp_path / "a.onnx")
        assert "input_size=(samples,)" in str(info.value)
        assert list(tmp_path.iterdir()) == []

    def test_swin_exports_with_eager_attention_and_says_so(self, tiny_hf, tmp_path):
        """Swin, whose default attention torch.export cannot trace, is exported with eager
        attention; the report says so, the model keeps its own attention, the file matches."""
        swin = tiny_hf["swin"]
        before = attention_settings(swin)
        assert before[0] != "eager"
        report = export_onnx(swin, tmp_path / "swin.onnx")
        (note,) = report.notes
        assert "attn_implementation='eager'" in note and "verified against the model" in note
        assert "\x1b" not in note
        assert report.to_dict()["notes"] == [note]
        assert attention_settings(swin) == before
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            expected = swin(x).logits.numpy()
        np.testing.assert_allclose(run_onnx(report.path, x), expected, atol=1e-4)

    def test_failure_text_is_plain_and_says_what_to_do(self, tmp_path):
        """torch's exporter error reaches the user without terminal codes, as the step that
        failed, its cause, and what to do."""
        with pytest.raises(ExportError) as info:
            export_onnx(DataDependent(), tmp_path / "d.onnx", input_size=(3,))
        text = str(info.value)
        assert "\x1b" not in text and "[96m" not in text
        assert "Failed to export the model with torch.export: GuardOnDataDependentSymNode" in text
        assert "What to do:" in text and "torch.where or torch.cond" in text
        assert "Create an issue" not in text
        assert "\x1b" in str(info.value.__cause__)  # what torch said, kept as the cause
        assert list(tmp_path.iterdir()) == []

    def test_swin_failure_without_the_retry_is_plain(self, tiny_hf, tmp_path, monkeypatch):
        """Were eager attention unavailable, Swin's failure would be a plain ExportError naming
        torch's cause and suggesting attn_implementation='eager'."""
        from torchbridge import export

        monkeypatch.setattr(export, "_eager_attention", _no_switch)
        with pytest.raises(ExportError, match="Failed to decompose the FX graph") as info:
            export_onnx(tiny_hf["swin"], tmp_path / "s.onnx")
        text = str(info.value)
        assert "\x1b" not in text and "ValueError: Cannot view a tensor" in text
        assert "load the model with attn_implementation='eager'" in text
        assert list(tmp_path.iterdir()) == []

    def test_swin_by_registry_id_on_the_command_line(self, tiny_hf, isolated_caches, capsys):
        """`torchbridge export hf/...` of a cached Swin prints the note about eager attention."""
        from hf_models import cache_repo, make_swin
        from torchbridge.cli import main
        from torchbridge.registry.core import get_registry

        hub = isolated_caches / "hf" / "hub"
        model, _ = make_swin(isolated_caches / "swin")
        cache_repo(hub, "test/tiny-swin", isolated_caches / "swin")
        get_registry().refresh()
        out = isolated_caches / "swin.onnx"
        try:
            code = main(["export", "hf/test/tiny-swin", "-o", str(out)])
        finally:
            get_registry().refresh()
        text = capsys.readouterr().out
        assert code == 0, text
        assert "input pixel_values: float32[batch, 3, 32, 32]" in text
        assert "note: exported with attn_implementation='eager'" in text
        with torch.no_grad():
            expected = model.eval()(torch.ones(1, 3, 32, 32)).logits.numpy()
        np.testing.assert_allclose(run_onnx(out, torch.ones(1, 3, 32, 32)), expected, atol=1e-4)


@contextlib.contextmanager
def _no_switch(model):
    yield False
