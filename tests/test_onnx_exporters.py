"""import_onnx on graphs from both torch exporters (TorchScript and dynamo), opsets 11 to 20.

Each case exports a timm or torchvision model, imports the file (verified against
onnxruntime), checks the module against the original, finetunes it, reloads its
state_dict strictly, and, for one opset per exporter, exports it again.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch

from torchbridge import export_onnx, import_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small graphs: see conftest


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    source, arch = name.split("/")
    if source == "timm":
        return timm.create_model(arch, num_classes=5).eval()
    return getattr(torchvision.models, arch)(num_classes=5).eval()


def _export(model, path, *, dynamo: bool, opset: int, size: int) -> None:
    x = torch.randn(2, 3, size, size)
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=["x"],
                output_names=["y"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
        else:
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            )


CASES = [
    # (model, exporter, opset, input size, re-export)
    ("timm/test_resnet", "torchscript", 11, 32, False),
    ("timm/test_resnet", "torchscript", 13, 32, False),
    ("timm/test_resnet", "torchscript", 15, 32, False),
    ("timm/test_resnet", "torchscript", 17, 32, True),
    ("timm/test_resnet", "torchscript", 20, 32, False),
    ("timm/test_resnet", "dynamo", 18, 32, True),
    ("timm/test_resnet", "dynamo", 20, 32, False),
    ("timm/test_vit", "torchscript", 16, 160, True),
    ("timm/test_vit", "dynamo", 18, 160, False),
    ("timm/test_efficientnet", "torchscript", 12, 32, False),
    ("timm/test_efficientnet", "torchscript", 14, 32, False),
    ("timm/test_efficientnet", "dynamo", 19, 32, False),
    ("torchvision/resnet18", "torchscript", 17, 32, True),
    ("torchvision/squeezenet1_1", "dynamo", 18, 64, False),
]


@pytest.mark.parametrize(
    "name, exporter, opset, size, reexport",
    CASES,
    ids=[f"{c[0]}-{c[1]}-opset{c[2]}" for c in CASES],
)
def test_import_verify_finetune(tmp_path, name, exporter, opset, size, reexport):
    """The exported file imports, matches the original, trains, reloads strictly, re-exports."""
    original = _model(name)
    if name == "timm/test_vit":
        size = original.default_cfg["input_size"][-1]
    path = tmp_path / "model.onnx"
    _export(original, path, dynamo=exporter == "dynamo", opset=opset, size=size)
    module = import_onnx(path)
    report = module.import_report
    assert report.batch_sizes_checked == (1, 3)
    assert report.max_abs_diff <= 1e-4
    assert report.fallbacks == {}  # every operator lowered to plain torch calls
    if exporter == "torchscript":  # weights routed through Identity nodes arrive folded
        assert report.opset == opset
    x, y = torch.randn(4, 3, size, size), torch.randint(0, 5, (4,))
    with torch.no_grad():
        torch.testing.assert_close(module(x), original(x), atol=1e-4, rtol=1e-4)

    module.train()
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(module(x), y)
        opt.zero_grad()
        loss.backward()
        missing = [n for n, p in module.named_parameters() if p.grad is None]
        assert not missing, f"No gradient for {missing}"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    # the weights of these models are all read in weight slots (NOTE [trainable weights]):
    # trainable="all" adds only a ViT's class token and position table
    again = import_onnx(path, verify=False, trainable="all")
    extra = set(again.import_report.parameter_names) - set(report.parameter_names)
    tables = {again.import_report.names[k] for k in extra}
    assert tables <= ({"cls_token", "pos_embed", "cat"} if name == "timm/test_vit" else set())
    again.load_state_dict(module.state_dict(), strict=True)
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), module(x))
    if reexport:
        out = export_onnx(module, tmp_path / "again.onnx", input_size=(3, size, size))
        assert out.max_abs_diff <= 1e-4


def test_torchscript_resnet18_routes_shared_weights_through_identity(tmp_path):
    """torch's TorchScript exporter feeds shared initializers through Identity nodes: folded."""
    import onnx

    original = _model("timm/resnet18")
    path = tmp_path / "r18.onnx"
    _export(original, path, dynamo=False, opset=17, size=32)
    graph = onnx.load(str(path), load_external_data=False).graph
    identities = [n for n in graph.node if n.op_type == "Identity"]
    module = import_onnx(path)
    assert module.import_report.max_abs_diff <= 1e-4
    if identities:
        assert module.import_report.folded.get("Identity", 0) >= len(identities)
    assert "Identity" not in module.graph.code


def test_gru_and_lstm_from_the_torchscript_exporter(tmp_path):
    """torch's GRU and LSTM (ONNX GRU with linear_before_reset=1, LSTM) import, verify, train."""

    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(6, 8, batch_first=True)
            self.lstm = torch.nn.LSTM(8, 5, batch_first=True, bidirectional=True)

        def forward(self, x):
            y, _ = self.gru(x)
            z, _ = self.lstm(y)
            return z

    torch.manual_seed(0)
    original = Recurrent().eval()
    path = tmp_path / "rnn.onnx"
    x = torch.randn(2, 7, 6)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            original,
            (x,),
            str(path),
            dynamo=False,
            opset_version=14,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    module = import_onnx(path)
    assert {"GRU", "LSTM"} <= set(module.import_report.operators)
    assert module.import_report.max_abs_diff <= 1e-5 and module.import_report.fallbacks == {}
    with torch.no_grad():
        torch.testing.assert_close(module(x), original(x), atol=1e-5, rtol=1e-5)
    module.train()
    module(x).square().mean().backward()
    missing = [n for n, p in module.named_parameters() if p.grad is None]
    assert not missing, f"No gradient for {missing}"
