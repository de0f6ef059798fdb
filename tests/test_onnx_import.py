"""import_onnx: ONNX files become trainable torch modules, checked against onnxruntime."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import torchbridge
from torchbridge import (
    DuplicateModelError,
    OnnxArgumentError,
    OnnxImportError,
    OnnxVerificationError,
    export_onnx,
    import_onnx,
)

onnx = pytest.importorskip("onnx")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small graphs: see conftest


# -- models the tests export themselves ------------------------------------------------


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2)).eval()


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),  # before the BatchNorm, so that the exporter cannot fold it into the Conv
        torch.nn.BatchNorm2d(4),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    bn = model[2]
    bn.running_mean.copy_(torch.randn(4) * 0.1)
    bn.running_var.copy_(torch.rand(4) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    export_onnx(_mlp(), path, input_size=(5,))
    return path


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    export_onnx(_cnn(), path, input_size=(3, 8, 8))
    return path


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory) -> Path:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=4
    ).eval()
    path = tmp_path_factory.mktemp("vit") / "vit.onnx"
    export_onnx(vit, path, input_size=(3, 32, 32))
    return path


def _rapidocr_cls() -> Path:
    """The text-direction classifier rapidocr-onnxruntime ships (a PaddlePaddle export)."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")  # found, not imported (no cv2)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rapidocr-onnxruntime (a dev dependency) is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is not in this rapidocr-onnxruntime")
    return path


# -- import and the report --------------------------------------------------------------


class TestImport:
    def test_report_describes_the_graph_and_the_check(self, mlp_file):
        """The report has opset, operators, names and shapes, and the check at batch 1 and 3."""
        module = import_onnx(mlp_file)
        report = module.import_report
        assert isinstance(report, torchbridge.OnnxImportReport)
        assert report.opset >= 18 and report.converted_opset == report.opset
        assert report.operators.get("Gemm") == 2 and "Tanh" in report.operators
        assert [(i.name, i.shape, i.dtype) for i in report.inputs] == [
            ("input", ("batch", 5), "float32")
        ]
        assert [(o.name, o.shape) for o in report.outputs] == [("output", ("batch", 2))]
        assert report.batch_sizes_checked == (1, 3)
        assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
        assert report.verified_with.startswith("onnxruntime")
        assert report.converter.startswith("torchbridge.onnx_convert")
        assert report.normaliser.startswith("onnxslim") and report.fallbacks == {}
        assert json.loads(json.dumps(report.to_dict()))["inputs"][0]["shape"] == ["batch", 5]

    def test_module_computes_what_the_original_computes(self, mlp_file):
        """At any batch size the imported module returns the exported model's outputs."""
        module = import_onnx(mlp_file, verify=False)
        assert module.import_report.max_abs_diff is None
        x = torch.randn(6, 5)
        torch.testing.assert_close(module(x), _mlp()(x), atol=1e-5, rtol=1e-5)

    def test_initializers_become_parameters(self, mlp_file):
        """Every weight of the graph is a trainable parameter, and nothing else is."""
        module = import_onnx(mlp_file)
        original = _mlp()
        assert all(p.requires_grad for p in module.parameters())
        assert sorted(p.numel() for p in module.parameters()) == sorted(
            p.numel() for p in original.parameters()
        )
        assert module.import_report.parameters == sum(p.numel() for p in original.parameters())

    def test_several_outputs_come_back_by_name(self, tmp_path):
        """A graph with two outputs returns a dict in graph order."""

        class Two(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.a = torch.nn.Linear(3, 2)

            def forward(self, x):
                y = self.a(x)
                return {"logits": y, "probs": y.softmax(-1)}

        export_onnx(Two().eval(), tmp_path / "two.onnx", input_size=(3,))
        module = import_onnx(tmp_path / "two.onnx")
        out = module(torch.randn(2, 3))
        assert list(out) == ["logits", "probs"]
        assert [o.name for o in module.import_report.outputs] == ["logits", "probs"]


# -- training ------------------------------------------------------------------------------


class TestTraining:
    def test_gradients_match_finite_differences_in_float64(self, mlp_file):
        """gradcheck: gradients w.r.t. the input and every parameter are right in float64."""
        module = import_onnx(mlp_file).double()
        names = [n for n, _ in module.named_parameters()]
        params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
        x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

        def f(x, *ps):
            return torch.func.functional_call(module, dict(zip(names, ps)), (x,))

        assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)

    def test_finetune_lowers_the_loss_and_batchnorm_stays_inference(self, cnn_file):
        """A few Adam steps lower the loss; BatchNorm keeps its running statistics."""
        module = import_onnx(cnn_file)
        bn = next(
            m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        )
        stats = bn.running_mean.clone(), bn.running_var.clone()
        assert module.import_report.operators["BatchNormalization"] == 1
        x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
        module.train()
        assert not bn.training  # NOTE [inference graphs]
        with torch.no_grad():
            torch.testing.assert_close(module(x), _cnn()(x), atol=1e-5, rtol=1e-5)
        opt = torch.optim.Adam(module.parameters(), lr=1e-2)
        losses = []
        for _ in range(10):
            loss = torch.nn.functional.cross_entropy(module(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]
        assert all(p.grad is not None for p in module.parameters())
        assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])

    def test_batchnorm_train_follows_the_module_mode(self, cnn_file):
        """batchnorm="train": BatchNorm uses batch statistics and updates its running ones."""
        module = import_onnx(cnn_file, batchnorm="train")
        bn = next(
            m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        )
        before = bn.running_mean.clone()
        module.train()
        assert bn.training
        module(torch.randn(8, 3, 8, 8) + 3.0)
        assert not torch.equal(bn.running_mean, before)
        module.eval()
        assert not bn.training

    def test_vit_imports_verifies_and_trains(self, vit_file):
        """A small timm ViT: verified, every parameter gets a gradient, the loss goes down."""
        module = import_onnx(vit_file)
        report = module.import_report
        assert {"LayerNormalization", "MatMul", "Softmax"} <= set(report.operators)
        assert report.max_abs_diff <= 1e-4
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
        module.train()
        opt = torch.optim.Adam(module.parameters(), lr=1e-3)
        losses = []
        for _ in range(6):
            loss = torch.nn.functional.cross_entropy(module(x), y)
            opt.zero_grad()
            loss.backward()
            missing = [n for n, p in module.named_parameters() if p.grad is None]
            assert not missing, f"No gradient for {missing}"
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]

    def test_bridged_forward_and_pullback(self, mlp_file):
        """The bridge (what Julia calls) runs an imported module and returns its gradients."""
        bridged = torchbridge.bridge(import_onnx(mlp_file))
        try:
            x = torch.randn(4, 5)
            outputs, pullback = bridged.forward(x)
            grads = pullback(torch.ones_like(outputs[0]))
            assert outputs[0].shape == (4, 2)
            assert grads is not None
            assert any(g.abs().sum() > 0 for g in bridged.grads)
        finally:
            bridged.close()


class TestRoundTrip:
    def test_export_import_finetune_export(self, tmp_path):
        """timm model -> export_onnx -> import_onnx -> finetune -> export_onnx verifies."""
        timm = pytest.importorskip("timm")
        original = timm.create_model("test_resnet", num_classes=5).eval()
        export_onnx(original, tmp_path / "a.onnx", input_size=(3, 32, 32))
        module = import_onnx(tmp_path / "a.onnx")
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,))
        module.train()
        opt = torch.optim.SGD(module.parameters(), lr=1e-2)
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(module(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        module.eval()
        report = export_onnx(module, tmp_path / "b.onnx", input_size=(3, 32, 32))
        assert report.batch_sizes_checked == (1, 3)
        assert report.max_abs_diff <= 1e-4
        again = import_onnx(tmp_path / "b.onnx")
        with torch.no_grad():
            torch.testing.assert_close(again(x), module(x), atol=1e-4, rtol=1e-4)
            assert not torch.allclose(module(x), original(x), atol=1e-4)  # it was finetuned

    def test_vit_with_run_time_shapes_reexports(self, vit_file, tmp_path):
        """A ViT (Shape -> Gather -> Concat -> Reshape/Expand) re-exports with a dynamic batch."""
        module = import_onnx(vit_file)
        assert "_shape" in module.graph.code  # shapes computed at run time
        report = export_onnx(module, tmp_path / "again.onnx", input_size=(3, 32, 32))
        assert report.batch_sizes_checked == (1, 3) and report.max_abs_diff <= 1e-4
        again = import_onnx(tmp_path / "again.onnx")
        x = torch.randn(5, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(again(x), module(x), atol=1e-4, rtol=1e-4)

    @pytest.mark.cuda
    def test_imported_vit_runs_and_trains_on_cuda(self, vit_file):
        """Run-time shape arithmetic stays on the module's device: CUDA matches CPU."""
        module = import_onnx(vit_file)
        x = torch.randn(3, 3, 32, 32)
        expected = module(x)
        expected.sum().backward()
        cpu_grads = [p.grad.clone() for p in module.parameters()]
        module.zero_grad()
        module.cuda()
        out = module(x.cuda())
        out.sum().backward()
        torch.testing.assert_close(out.cpu(), expected, atol=1e-4, rtol=1e-4)
        for g, p in zip(cpu_grads, module.parameters()):
            torch.testing.assert_close(p.grad.cpu(), g, atol=1e-3, rtol=1e-3)


class _Normalised(torch.nn.Module):
    """A normalisation mean and a positional table (buffers in torch) around a convolution."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("pos", torch.randn(1, 4, 4))
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x - self.mean).flatten(2)[..., :4] + self.pos


@pytest.fixture(scope="module")
def normalised_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("normalised") / "normalised.onnx"
    export_onnx(_Normalised().eval(), path, input_size=(3, 4, 4))
    return path


def _onnx_name(module, torch_name: str) -> str:
    return module.import_report.names[torch_name]


class TestTrainable:
    def test_only_weights_are_parameters_by_default(self, normalised_file):
        """The convolution's weight and bias train; the mean and the table are buffers,
        in state_dict, and the report lists both kinds."""
        module = import_onnx(normalised_file)
        report = module.import_report
        params = dict(module.named_parameters())
        assert sorted(p.shape for p in params.values()) == [(4,), (4, 3, 1, 1)]
        assert report.trainable == "weights"
        assert report.parameter_names == tuple(params)
        assert report.parameters == 16
        buffers = {_onnx_name(module, k): module.get_buffer(k) for k in report.buffer_names}
        assert {name.split(".")[-1] for name in buffers} >= {"mean", "pos"}
        assert not any(b.requires_grad for b in buffers.values())
        assert set(report.buffer_names) | set(params) == set(module.state_dict())
        assert json.loads(json.dumps(report.to_dict()))["buffer_names"] == list(report.buffer_names)

    def test_weight_decay_changes_the_weights_only(self, normalised_file):
        """AdamW with weight decay over parameters() leaves the mean and the table as they were."""
        module = import_onnx(normalised_file)
        before = {k: v.clone() for k, v in module.state_dict().items()}
        opt = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.5)
        module.train()
        for _ in range(3):
            loss = module(torch.randn(2, 3, 4, 4)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = module.state_dict()
        for key in module.import_report.buffer_names:
            assert torch.equal(after[key], before[key]), key
        for key in module.import_report.parameter_names:
            assert not torch.equal(after[key], before[key]), key

    def test_all_none_names_and_a_callable(self, normalised_file):
        """trainable="all" / "none" / {names} / callable choose the parameters; the
        state_dict keys stay the same, so weights reload strictly across the choices."""
        weights = import_onnx(normalised_file)
        every = import_onnx(normalised_file, trainable="all")
        assert len(every.import_report.parameter_names) == 4
        assert every.import_report.trainable == "all"
        none = import_onnx(normalised_file, trainable="none")
        assert list(none.parameters()) == [] and none.import_report.parameters == 0
        pos = next(
            _onnx_name(every, k) for k in every.import_report.parameter_names if k.endswith("pos")
        )
        only = import_onnx(normalised_file, trainable={pos})
        assert [_onnx_name(only, k) for k in only.import_report.parameter_names] == [pos]
        assert only.import_report.trainable == "names"
        chosen = import_onnx(normalised_file, trainable=lambda name: name.startswith("conv"))
        assert sorted(p.numel() for p in chosen.parameters()) == [4, 12]
        assert chosen.import_report.trainable == "callable"
        x = torch.randn(3, 3, 4, 4)
        reference = {k: v.clone() for k, v in weights.state_dict().items()}
        with torch.no_grad():
            expected = _Normalised()(x)
            for module in (weights, every, none, only, chosen):
                assert set(module.state_dict()) == set(reference)
                torch.testing.assert_close(module(x), expected)
                for p in module.parameters():
                    p.add_(1.0)
                result = module.load_state_dict(reference, strict=True)
                assert result.missing_keys == [] and result.unexpected_keys == []
                torch.testing.assert_close(module(x), expected)

    @pytest.mark.parametrize(
        "trainable, match",
        [
            ({"no_such_constant"}, r"names 'no_such_constant', which is not a floating-point"),
            ("weight", r"got 'weight' \(for one name, pass \{'weight'\}\)"),
            (5, "got a int"),
            (lambda name: "yes", "must return True or False, got 'yes'"),
            (lambda name: 1 / 0, "trainable= raised ZeroDivisionError"),
        ],
    )
    def test_bad_rules_are_argument_errors(self, normalised_file, trainable, match):
        """An unknown name, an unknown rule or a callable that fails is an OnnxArgumentError."""
        with pytest.raises(OnnxArgumentError, match=match):
            import_onnx(normalised_file, verify=False, trainable=trainable)

    def test_a_vit_keeps_its_tables_as_buffers(self, vit_file):
        """A ViT's linear layers and layer norms are parameters; its class token and position
        table, which no operator reads as a weight, are buffers (trainable="all" trains them)."""
        weights = import_onnx(vit_file, verify=False).import_report
        every = import_onnx(vit_file, verify=False, trainable="all").import_report
        extra = set(every.parameter_names) - set(weights.parameter_names)
        assert {every.names[k] for k in extra} == {"cls_token", "pos_embed"}
        assert set(weights.parameter_names) < set(every.parameter_names)

    def test_modules_of_batchnorm_and_lstm_follow_the_rule(self, cnn_file, tmp_path):
        """BatchNormalization's scale and bias, and an LSTM's W/R/B, are parameters by
        default and buffers with trainable="none" (the LSTM still runs on them, in float64 too)."""
        bn = import_onnx(cnn_file)
        frozen = import_onnx(cnn_file, trainable="none")
        assert any(
            k.endswith(".weight") and "bn" not in k for k in bn.import_report.parameter_names
        )
        assert list(frozen.parameters()) == []
        x = torch.randn(2, 3, 8, 8)
        torch.testing.assert_close(frozen(x), bn(x))
        assert set(frozen.state_dict()) == set(bn.state_dict())

        lstm_path = TestConverter()._lstm_from_constants(tmp_path)
        shapes = {"x": (5, 2, 3)}
        trained = import_onnx(lstm_path, input_shapes=shapes)
        layer = next(m for m in trained.modules() if isinstance(m, torch.nn.LSTM))
        assert {n for n, _ in layer.named_parameters()} == {
            "weight_ih_l0",
            "weight_hh_l0",
            "bias_ih_l0",
            "bias_hh_l0",
        }
        still = import_onnx(lstm_path, input_shapes=shapes, trainable="none")
        assert list(still.parameters()) == []
        seq = torch.randn(5, 2, 3)
        torch.testing.assert_close(still(seq)["y"], trained(seq)["y"])
        still.double()  # the layer reads its weights again after a conversion
        torch.testing.assert_close(still(seq.double())["y"].float(), trained(seq)["y"])


class TestThirdParty:
    def test_paddle_export_from_a_wheel_imports_and_trains(self):
        """rapidocr's PaddlePaddle classifier (constant-node weights) imports and trains."""
        path = _rapidocr_cls()
        module = import_onnx(path, input_shapes={"x": (3, 48, 192)})
        report = module.import_report
        assert report.batch_sizes_checked == (1, 3)
        assert report.max_abs_diff <= 1e-4
        assert "BatchNormalization" in report.operators and "HardSigmoid" in report.operators
        assert report.inputs[0].shape[2:] == ("?", "?")
        assert report.parameters > 100_000  # the Constant-node weights are parameters
        x = torch.randn(2, 3, 48, 192, requires_grad=True)
        module(x).sum().backward()
        assert x.grad is not None and all(p.grad is not None for p in module.parameters())

    def test_free_dimensions_without_shapes_are_refused_with_the_fix(self):
        """A non-batch free dimension needs input_shapes to be verified, and says so."""
        with pytest.raises(OnnxImportError, match=r"input_shapes=\{'x'"):
            import_onnx(_rapidocr_cls())


# -- bad input -------------------------------------------------------------------------------


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


class TestBadInput:
    def test_not_onnx(self, tmp_path):
        """A file of another format is an OnnxImportError saying it is not ONNX."""
        path = tmp_path / "model.onnx"
        path.write_text("this is not a model\n" * 10)
        with pytest.raises(OnnxImportError, match="not an ONNX model"):
            import_onnx(path)
        assert _listing(tmp_path) == ["model.onnx"]

    def test_missing_file(self, tmp_path):
        """A path without a file is an OnnxImportError naming it."""
        with pytest.raises(OnnxImportError, match="no file at"):
            import_onnx(tmp_path / "absent.onnx")

    @pytest.mark.parametrize("fraction", [0.5, 0.97])
    def test_truncated(self, mlp_file, tmp_path, fraction):
        """A truncated file is an OnnxImportError, wherever it is cut."""
        data = mlp_file.read_bytes()
        path = tmp_path / "cut.onnx"
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(OnnxImportError, match="truncated"):
            import_onnx(path)
        assert _listing(tmp_path) == ["cut.onnx"]

    @pytest.mark.parametrize("where", ["input", "output"])
    def test_a_sequence_input_or_output_is_named(self, tmp_path, where):
        """A graph whose input or output is a sequence (valid ONNX) is an OnnxImportError
        naming it, not a KeyError from onnx's dtype table."""
        import onnx
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
        if where == "output":
            nodes = [helper.make_node("SequenceConstruct", ["x"], ["y"])]
            graph = helper.make_graph(
                nodes, "g", [x], [helper.make_tensor_sequence_value_info("y", 1, None)]
            )
        else:
            nodes = [helper.make_node("SequenceAt", ["s", "i"], ["y"])]
            seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
            i = helper.make_tensor_value_info("i", TensorProto.INT64, [])
            y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
            graph = helper.make_graph(nodes, "g", [seq, i], [y])
        path = tmp_path / "seq.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        name = "y" if where == "output" else "s"
        with pytest.raises(OnnxImportError, match=f"graph {where} '{name}' is a sequence"):
            import_onnx(path)

    def test_operator_the_converter_lacks(self, tmp_path):
        """An unknown operator is named with its domain and opset; err.operators lists it."""
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [
                helper.make_node("Relu", ["x"], ["h"]),
                helper.make_node("Frobnicate", ["h"], ["y"], domain="com.example"),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 3)],
        )
        path = tmp_path / "custom.onnx"
        onnx.save(model, path)
        with pytest.raises(OnnxImportError) as err:
            import_onnx(path)
        assert "Frobnicate (domain com.example, opset 3" in str(err.value)
        assert err.value.operators == ("com.example.Frobnicate",)

    def test_default_domain_operator_the_converter_lacks(self, tmp_path):
        """An ai.onnx operator outside the converter's table is refused, not guessed."""
        from onnx import TensorProto, helper

        from torchbridge.onnx_import import supported_operators

        assert "Mul" in supported_operators() and "Conv" in supported_operators()
        assert "Gradient" not in supported_operators()
        graph = helper.make_graph(
            [helper.make_node("Frobnicate", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        path = tmp_path / "unknown.onnx"
        path.write_bytes(model.SerializeToString())  # onnx.save would check it
        with pytest.raises(OnnxImportError, match=r"Frobnicate|not a valid ONNX"):
            import_onnx(path)

    def test_external_data(self, mlp_file, tmp_path):
        """Weights in an external file load; without that file the error names it."""
        model = onnx.load(str(mlp_file))
        path = tmp_path / "ext.onnx"
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="ext.weights",
            size_threshold=0,
        )
        module = import_onnx(path)
        x = torch.randn(2, 5)
        torch.testing.assert_close(module(x), _mlp()(x), atol=1e-5, rtol=1e-5)
        (tmp_path / "ext.weights").unlink()
        with pytest.raises(OnnxImportError, match="ext.weights"):
            import_onnx(path)
        assert _listing(tmp_path) == ["ext.onnx"]

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"batchnorm": "eval"}, "batchnorm must be"),
            ({"inputs": 5}, "inputs= takes .* got a int"),
            ({"inputs": "x"}, "inputs= takes .* got a str"),
            ({"inputs": [5]}, "batch 0 is a int"),
            ({"input_shapes": [3, 8, 8]}, "input_shapes= takes"),
            ({"input_shapes": {"input": "abc"}}, r"input_shapes\['input'\] must be"),
            ({"tolerance": "1e-4"}, "tolerance must be"),
            ({"max_tensor_bytes": 1.5}, "max_tensor_bytes must be"),
        ],
    )
    def test_bad_keywords_are_typed_errors(self, mlp_file, kwargs, match):
        """A keyword of a wrong kind is an OnnxArgumentError: an OnnxImportError and a TypeError."""
        with pytest.raises(OnnxArgumentError, match=match) as err:
            import_onnx(mlp_file, **kwargs)
        assert isinstance(err.value, OnnxImportError) and isinstance(err.value, TypeError)

    def test_verification_failure_names_the_output(self, vit_file):
        """An output beyond the tolerance is an OnnxVerificationError naming it."""
        with pytest.raises(OnnxVerificationError, match="output 'output'") as err:
            import_onnx(vit_file, tolerance=1e-12)
        assert err.value.output == "output"

    def test_old_opset_is_upgraded(self, tmp_path):
        """A graph below opset 7 is converted with onnx.version_converter, and verified.

        (The converter's broadcasting adapters need fixed dimensions, so the shape is fixed.)
        """
        from onnx import TensorProto, helper, numpy_helper

        w = numpy_helper.from_array(torch.randn(4, 3).numpy(), "w")
        b = numpy_helper.from_array(torch.randn(3).numpy(), "b")
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "w"], ["h"]),
                helper.make_node("Add", ["h", "b"], ["y"], broadcast=1),
            ],
            "g",
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
                # IR version 3: initializers are graph inputs too
                helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3]),
                helper.make_tensor_value_info("b", TensorProto.FLOAT, [3]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
            initializer=[w, b],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
        model.ir_version = 3
        path = tmp_path / "old.onnx"
        onnx.save(model, path)
        module = import_onnx(path)
        assert module.import_report.opset == 6
        assert module.import_report.converted_opset >= 7
        assert module.import_report.max_abs_diff <= 1e-4  # at the declared shape
        x = torch.randn(2, 4)
        expected = x @ torch.from_numpy(numpy_helper.to_array(w)) + torch.from_numpy(
            numpy_helper.to_array(b)
        )
        torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5)


# -- the registry ----------------------------------------------------------------------------


def _external_data_file(folder: Path, value: float, location: str = "w.bin") -> Path:
    """A MatMul graph whose weight (4x4 of `value`) is in the external data file `location`."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import convert_model_to_external_data

    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.full((4, 4), value, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location=location, size_threshold=0
    )
    onnx.save(model, folder / "m.onnx")
    return folder / "m.onnx"


class TestRegistry:
    def test_external_data_is_registered_with_its_file(self, tmp_path, isolated_caches):
        """register_local_model copies an .onnx file's external data beside it, so the local
        model loads with the same weights; another model whose data file has the same name
        and other values is refused, not written over it."""
        location = "w.bin"
        source = _external_data_file(tmp_path / "src", 2.0, location)
        entry = torchbridge.register_local_model("extdata", source)
        models = Path(entry.weights.path).parent
        assert (models / location).is_file()
        x = torch.ones(3, 4)
        assert torch.equal(torchbridge.load_model("local/extdata")(x), torch.full((3, 4), 8.0))
        same = _external_data_file(tmp_path / "same", 2.0, location)
        torchbridge.register_local_model("extdata-same", same)  # the same bytes: shared
        other = _external_data_file(tmp_path / "other", 3.0, location)
        with pytest.raises(DuplicateModelError, match="would replace that model's weights"):
            torchbridge.register_local_model("extdata-other", other)
        assert not (models / "extdata-other.json").exists()
        assert torch.equal(torchbridge.load_model("local/extdata")(x), torch.full((3, 4), 8.0))

    def test_dropped_in_onnx_file_lists_and_loads(self, mlp_file, isolated_caches, monkeypatch):
        """An .onnx file in a models folder is local/<name>, task onnx, sizes in both orders."""
        folder = isolated_caches / "dropped"
        folder.mkdir()
        (folder / "tiny-mlp.onnx").write_bytes(mlp_file.read_bytes())
        monkeypatch.setenv("TORCHBRIDGE_MODEL_DIRS", str(folder))
        from torchbridge.registry.core import get_registry

        get_registry().refresh()
        ids = [e.id for e in torchbridge.list_models(source="local", task="onnx")]
        assert "local/tiny-mlp" in ids
        entry = torchbridge.model_info("local/tiny-mlp")
        assert entry.task == "onnx" and "onnx" in entry.tags
        assert entry.input_size == (5,) and entry.julia_input_size == (5,)
        module = torchbridge.load_model("local/tiny-mlp")
        assert module.import_report.batch_sizes_checked == (1, 3)
        x = torch.randn(3, 5)
        torch.testing.assert_close(module(x), _mlp()(x), atol=1e-5, rtol=1e-5)
        frozen = torchbridge.load_model("local/tiny-mlp", verify=False, trainable="none")
        assert list(frozen.parameters()) == [] and frozen.import_report.trainable == "none"

    def test_register_local_model_copies_an_onnx_file(self, cnn_file, isolated_caches):
        """register_local_model(name, "file.onnx") writes the file and a sidecar; it loads."""
        entry = torchbridge.register_local_model("bn-cnn", str(cnn_file), description="a CNN")
        folder = isolated_caches / "torchbridge" / "models"
        assert _listing(folder) == ["bn-cnn.json", "bn-cnn.onnx"]
        data = json.loads((folder / "bn-cnn.json").read_text())
        assert data["onnx"] == "bn-cnn.onnx" and data["task"] == "onnx" and data["sha256"]
        assert entry.id == "local/bn-cnn" and entry.description == "a CNN"
        assert entry.input_size == (3, 8, 8) and entry.julia_input_size == (8, 8, 3)
        module = torchbridge.load_model("local/bn-cnn", verify=False)
        x = torch.randn(2, 3, 8, 8)
        torch.testing.assert_close(module(x), _cnn()(x), atol=1e-5, rtol=1e-5)
        (folder / "bn-cnn.onnx").write_bytes(b"changed")
        with pytest.raises(torchbridge.ChecksumError):
            torchbridge.load_model("local/bn-cnn")

    def test_register_refuses_a_bad_file_and_leaves_nothing(self, tmp_path, isolated_caches):
        """A file that is not ONNX is refused before anything is written."""
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"\x00\x01garbage")
        target = isolated_caches / "torchbridge" / "fresh" / "models"
        with pytest.raises(OnnxImportError):
            torchbridge.register_local_model("bad", str(bad), directory=target)
        assert not (isolated_caches / "torchbridge" / "fresh").exists()

    def test_architecture_is_still_required_for_modules(self, isolated_caches):
        """Without an .onnx file, architecture= is required, as before."""
        with pytest.raises(TypeError, match="architecture"):
            torchbridge.register_local_model("m", _mlp())


# -- hardening: paths, sizes, names --------------------------------------------------------


def _external_outside(tmp_path: Path) -> tuple[Path, Path]:
    """An .onnx file in tmp_path/model whose weight lies at ../outside.bin."""
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path / "model"
    folder.mkdir()
    w = numpy_helper.from_array(torch.randn(4, 3).numpy(), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(
        model,
        str(folder / "m.onnx"),
        save_as_external_data=True,
        location="w.bin",
        size_threshold=0,
    )
    model = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../outside.bin"
    (folder / "w.bin").rename(tmp_path / "outside.bin")
    (folder / "m.onnx").write_bytes(model.SerializeToString())
    return folder / "m.onnx", tmp_path / "outside.bin"


class TestHardening:
    def test_external_data_outside_the_folder_is_refused_naming_tensor_and_path(self, tmp_path):
        """External data at ../outside.bin: OnnxImportError naming 'w' and the location."""
        path, _ = _external_outside(tmp_path)
        with pytest.raises(OnnxImportError, match=r"tensor 'w'.*'\.\./outside\.bin'"):
            import_onnx(path)

    def test_outside_paths_are_not_probed(self, tmp_path, monkeypatch):
        """The refusal comes from the name alone: the outside file is never stat'ed or opened."""
        import builtins
        import os

        path, outside = _external_outside(tmp_path)
        touched = []
        real_stat, real_open = os.stat, builtins.open

        def stat(p, *args, **kwargs):
            touched.append(os.path.abspath(os.fspath(p)) if not isinstance(p, int) else p)
            return real_stat(p, *args, **kwargs)

        def opener(p, *args, **kwargs):
            touched.append(os.path.abspath(os.fspath(p)) if not isinstance(p, int) else p)
            return real_open(p, *args, **kwargs)

        monkeypatch.setattr(os, "stat", stat)
        monkeypatch.setattr(builtins, "open", opener)
        outside.unlink()  # absent: the old check reported it "missing", i.e. looked for it
        with pytest.raises(OnnxImportError, match="not a file inside"):
            import_onnx(path)
        monkeypatch.undo()
        assert str(outside) not in touched

    def test_register_refuses_external_data_outside_and_writes_nothing(
        self, tmp_path, isolated_caches
    ):
        """register_local_model of such a file: OnnxImportError, no folder created."""
        path, _ = _external_outside(tmp_path)
        target = isolated_caches / "torchbridge" / "fresh" / "models"
        with pytest.raises(OnnxImportError, match="tensor 'w'"):
            torchbridge.register_local_model("outside", str(path), directory=target)
        assert not (isolated_caches / "torchbridge" / "fresh").exists()

    def _constant_of_shape(self, tmp_path, shape) -> Path:
        from onnx import TensorProto, helper, numpy_helper

        graph = helper.make_graph(
            [
                helper.make_node("ConstantOfShape", ["s"], ["c"], name="fill"),
                helper.make_node("Add", ["x", "c"], ["y"]),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", shape[-1]])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", shape[-1]])],
            initializer=[numpy_helper.from_array(torch.tensor(shape).numpy(), "s")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        path = tmp_path / "fill.onnx"
        path.write_bytes(model.SerializeToString())
        return path

    def test_absurd_constant_is_refused_before_allocating(self, tmp_path):
        """A ConstantOfShape of 4 TiB: OnnxImportError naming the node, nothing allocated."""
        import tracemalloc

        path = self._constant_of_shape(tmp_path, [1 << 20, 1 << 20, 1])
        tracemalloc.start()
        try:
            with pytest.raises(
                OnnxImportError, match=r"ConstantOfShape node 'fill'.*max_tensor_bytes"
            ):
                import_onnx(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 * 2**20

    @pytest.mark.parametrize("made_by", ["Range", "ConstantOfShape of a Concat"])
    def test_a_computed_constant_is_refused_before_folding(self, tmp_path, made_by):
        """A constant the graph computes from constants (a Range; a shape made by Concat),
        which a normaliser would fold through onnxruntime, is measured by shape inference
        and refused above max_tensor_bytes before anything folds it."""
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper

        if made_by == "Range":
            nodes = [helper.make_node("Range", ["s", "l", "d"], ["c"], name="big")]
            values = {"s": 0.0, "l": float(1 << 26), "d": 1.0}
            inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in values.items()]
        else:
            nodes = [
                helper.make_node("Concat", ["a", "b"], ["shape"], axis=0),
                helper.make_node("ConstantOfShape", ["shape"], ["c"], name="big"),
            ]
            inits = [
                numpy_helper.from_array(np.array([1 << 13], np.int64), "a"),
                numpy_helper.from_array(np.array([1 << 13], np.int64), "b"),
            ]
        nodes.append(helper.make_node("ReduceSum", ["c"], ["y"], keepdims=0))
        graph = helper.make_graph(
            nodes, "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], inits
        )
        path = tmp_path / "computed.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        with pytest.raises(
            OnnxImportError, match=r"node 'big' would make a constant .*\(0\.25 GiB\)"
        ):
            import_onnx(path, max_tensor_bytes=16 << 20, verify=False)

    def test_constant_limit_is_the_keyword(self, tmp_path):
        """max_tensor_bytes= bounds folded constants: 4 KB refused at 1 KB, accepted at default."""
        path = self._constant_of_shape(tmp_path, [1, 1024])
        with pytest.raises(OnnxImportError, match="max_tensor_bytes=1000"):
            import_onnx(path, max_tensor_bytes=1000)
        module = import_onnx(path)
        x = torch.randn(2, 1024)
        torch.testing.assert_close(module(x), x)

    def test_huge_declared_input_is_refused_before_verifying(self, tmp_path):
        """An input declared as 37,000 GiB is refused with OnnxImportError, not a RuntimeError."""
        from onnx import TensorProto, helper

        shape = [100000, 100000, 1000]
        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        )
        path = tmp_path / "big.onnx"
        path.write_bytes(
            helper.make_model(
                graph, opset_imports=[helper.make_opsetid("", 17)]
            ).SerializeToString()
        )
        with pytest.raises(OnnxImportError, match=r"inputs to verify.*x \[100000, 100000, 1000\]"):
            import_onnx(path)
        assert import_onnx(path, verify=False).import_report.max_abs_diff is None

    def test_dotted_output_names_reload_strictly(self, tmp_path):
        """A Conv whose output is 'conv.out': state_dict reloads with strict=True; the map leads back."""
        from onnx import TensorProto, helper, numpy_helper

        w = numpy_helper.from_array(torch.randn(3, 2, 3, 3).numpy(), "/conv.0/weight")
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "/conv.0/weight"], ["conv.out"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 5, 5])],
            [helper.make_tensor_value_info("conv.out", TensorProto.FLOAT, ["batch", 3, 3, 3])],
            initializer=[w],
        )
        path = tmp_path / "conv.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        module = import_onnx(path)
        state = {k: v.clone() for k, v in module.state_dict().items()}
        assert all("conv.out" not in k and "/" not in k for k in state)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(1.0)
        result = module.load_state_dict(state, strict=True)
        assert result.missing_keys == [] and result.unexpected_keys == []
        for key, value in module.state_dict().items():
            assert torch.equal(value, state[key]), key  # the +1 is undone
        again = import_onnx(path)
        x = torch.randn(2, 2, 5, 5)
        torch.testing.assert_close(module(x), again(x))
        key = next(k for k, v in module.import_report.names.items() if v == "/conv.0/weight")
        assert key in state
        torch.testing.assert_close(
            module.get_parameter(key), torch.from_numpy(numpy_helper.to_array(w))
        )


# -- the converter: graphs as exporters leave them --------------------------------------------


def _save(tmp_path, nodes, inputs, outputs, initializers=(), opset=17, name="g.onnx") -> Path:
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _ort(path, feed):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


class TestConverter:
    def _lstm_from_constants(self, tmp_path, w_from_input: bool = False) -> Path:
        """An LSTM whose W is a Constant reshaped, R a Constant sliced (as Silero's files)."""
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        hidden, features = 4, 3
        w = rng.standard_normal((4 * hidden * features,)).astype(np.float32)
        r = rng.standard_normal((1, 8 * hidden, hidden)).astype(np.float32)
        b = rng.standard_normal((1, 8 * hidden)).astype(np.float32)
        nodes = [
            helper.make_node("Constant", [], ["w_flat"], value=numpy_helper.from_array(w)),
            helper.make_node("Constant", [], ["r_big"], value=numpy_helper.from_array(r)),
            helper.make_node(
                "Constant",
                [],
                ["shape"],
                value=numpy_helper.from_array(np.array([1, 4 * hidden, features], np.int64)),
            ),
            helper.make_node("Reshape", ["w_flat", "shape"], ["w_const"]),
            helper.make_node(
                "Constant", [], ["starts"], value=numpy_helper.from_array(np.array([0], np.int64))
            ),
            helper.make_node(
                "Constant",
                [],
                ["ends"],
                value=numpy_helper.from_array(np.array([4 * hidden], np.int64)),
            ),
            helper.make_node(
                "Constant", [], ["axes"], value=numpy_helper.from_array(np.array([1], np.int64))
            ),
            helper.make_node("Slice", ["r_big", "starts", "ends", "axes"], ["r"]),
            helper.make_node(
                "LSTM",
                ["x", "w_in" if w_from_input else "w_const", "r", "b"],
                ["y", "y_h"],
                hidden_size=hidden,
                name="lstm",
            ),
        ]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, "batch", features])]
        if w_from_input:
            inputs.append(
                helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [1, 4 * hidden, features])
            )
        return _save(
            tmp_path,
            nodes,
            inputs,
            [
                helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 1, "batch", hidden]),
                helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [1, "batch", hidden]),
            ],
            [numpy_helper.from_array(b, "b")],
        )

    def test_lstm_weights_computed_from_constants_import_and_train(self, tmp_path):
        """W = Reshape(Constant), R = Slice(Constant): folded, a torch LSTM, verified, trainable."""
        module = import_onnx(self._lstm_from_constants(tmp_path), input_shapes={"x": (5, 2, 3)})
        report = module.import_report
        assert report.max_abs_diff <= 1e-5
        assert report.folded.get("Reshape") and report.folded.get("Slice")
        lstm = next(m for m in module.modules() if isinstance(m, torch.nn.LSTM))
        x = torch.randn(5, 2, 3)
        out = module(x)
        (out["y"].sum() + out["y_h"].sum()).backward()
        assert lstm.weight_ih_l0.grad is not None and lstm.weight_hh_l0.grad is not None
        trainable = {n for n, p in module.named_parameters()}
        assert {n.rpartition(".")[2] for n in trainable} == {
            "weight_ih_l0",
            "weight_hh_l0",
            "bias_ih_l0",
            "bias_hh_l0",
        }

    def test_lstm_weight_known_only_at_run_time_is_refused_naming_the_node(self, tmp_path):
        """An LSTM whose W is a graph input: OnnxImportError naming node, operator, domain, opset."""
        path = self._lstm_from_constants(tmp_path, w_from_input=True)
        with pytest.raises(OnnxImportError) as err:
            import_onnx(path)
        text = str(err.value)
        assert "node 'lstm' in the main graph: operator LSTM (domain ai.onnx, opset 17)" in text
        assert "W must be known at import time" in text
        assert err.value.operators == ("LSTM",) and err.value.node == "lstm"

    def _branchy(self, tmp_path, cond_const: bool | None) -> Path:
        """If(cond) whose then-branch convolves with a weight of the enclosing graph."""
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(1)
        w = numpy_helper.from_array(rng.standard_normal((2, 2, 3, 3)).astype(np.float32), "outer.w")
        shape = ["batch", 2, 5, 5]
        out_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
        then_g = helper.make_graph(
            [
                helper.make_node(
                    "Constant",
                    [],
                    ["pads_bias"],
                    value=numpy_helper.from_array(np.full((2,), 0.5, np.float32)),
                ),
                helper.make_node(
                    "Conv",
                    ["x", "outer.w", "pads_bias"],
                    ["t"],
                    pads=[1, 1, 1, 1],
                    name="branch_conv",
                ),
                helper.make_node("Relu", ["t"], ["then_y"]),
            ],
            "then",
            [],
            [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, shape)],
        )
        else_g = helper.make_graph(
            [helper.make_node("Neg", ["x"], ["else_y"])],
            "else",
            [],
            [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, shape)],
        )
        nodes = []
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 5, 5])]
        initializers = [w]
        if cond_const is None:
            inputs.append(helper.make_tensor_value_info("flag", TensorProto.INT64, []))
            initializers.append(numpy_helper.from_array(np.array(16000, np.int64), "rate"))
            nodes.append(helper.make_node("Equal", ["flag", "rate"], ["cond"]))
        else:
            nodes.append(
                helper.make_node(
                    "Constant", [], ["cond"], value=numpy_helper.from_array(np.array(cond_const))
                )
            )
        nodes.append(
            helper.make_node(
                "If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="pick"
            )
        )
        return _save(tmp_path, nodes, inputs, [out_info], initializers)

    def test_constant_condition_if_is_folded(self, tmp_path):
        """If on a constant condition: the branch joins the graph; no If at run time."""
        from torchbridge.onnx_convert import OnnxIf

        module = import_onnx(self._branchy(tmp_path, True))
        assert module.import_report.folded.get("If") == 1
        assert not any(isinstance(m, OnnxIf) for m in module.modules())
        x = torch.randn(2, 2, 5, 5)
        (expected,) = _ort(module.import_report.path, {"x": x.numpy()})
        torch.testing.assert_close(module(x), torch.from_numpy(expected))
        module(x).sum().backward()
        assert all(p.grad is not None for p in module.parameters())

    def test_run_time_if_reads_a_weight_of_the_enclosing_graph(self, tmp_path):
        """A Conv in a branch using an outer weight: verified on both branches, and trains."""
        import numpy as np

        path = self._branchy(tmp_path, None)
        x = np.random.default_rng(2).standard_normal((2, 2, 5, 5)).astype(np.float32)
        module = import_onnx(
            path,
            inputs=[{"x": x, "flag": np.array(16000)}, {"x": x, "flag": np.array(8000)}],
        )
        report = module.import_report
        assert report.inputs_checked == 2 and report.batch_sizes_checked == ()
        xt = torch.from_numpy(x)
        torch.testing.assert_close(module(xt, torch.tensor(8000)), -xt)
        out = module(xt, torch.tensor(16000))
        torch.testing.assert_close(
            out, torch.from_numpy(_ort(path, {"x": x, "flag": np.array(16000)})[0])
        )
        out.sum().backward()
        weight = module.get_parameter(next(k for k, v in report.names.items() if v == "outer.w"))
        assert weight.grad is not None and weight.grad.abs().sum() > 0

    def test_expand_broadcasts_to_a_larger_rank(self, tmp_path):
        """Expand of [1, 1, 64] by [2048, 64] is [1, 2048, 64], as in Magika."""
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper

        path = _save(
            tmp_path,
            [helper.make_node("Expand", ["x", "shape"], ["y"])],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2048, 64])],
            [numpy_helper.from_array(np.array([2048, 64], np.int64), "shape")],
        )
        module = import_onnx(path)
        assert module.import_report.max_abs_diff == 0.0
        x = torch.randn(1, 1, 64)
        assert module(x).shape == (1, 2048, 64)
        torch.testing.assert_close(module(x), x.expand(1, 2048, 64))

    def test_caller_inputs_verify_a_value_constrained_input(self, tmp_path):
        """inputs= verifies on the caller's values; random ones join only with input_shapes."""
        import numpy as np

        path = self._branchy(tmp_path, None)
        x = np.ones((1, 2, 5, 5), np.float32)
        module = import_onnx(path, inputs={"x": x, "flag": np.array(16000)})
        assert module.import_report.inputs_checked == 1
        assert module.import_report.batch_sizes_checked == ()
        with pytest.raises(OnnxImportError, match=r"inputs= batch 0 .*unknown sr.*missing flag"):
            import_onnx(path, inputs={"x": x, "sr": np.array(16000)})
        with pytest.raises(OnnxImportError, match="'flag' has dtype int32"):
            import_onnx(path, inputs={"x": x, "flag": np.array(16000, np.int32)})

    def test_a_failing_lowering_names_the_node_not_its_exception(self, tmp_path, monkeypatch):
        """A lowering's own exception becomes an OnnxImportError naming the node and operator."""
        from torchbridge import onnx_ops

        def broken(n):
            raise KeyError("kernel_size")

        monkeypatch.setitem(onnx_ops.LOWERINGS, "Conv", broken)
        with pytest.raises(OnnxImportError) as err:
            import_onnx(self._branchy(tmp_path, None), verify=False)
        text = str(err.value)
        assert "node 'branch_conv' in then_branch of If 'pick' in the main graph" in text
        assert "operator Conv (domain ai.onnx, opset 17)" in text and "KeyError" in text
        assert err.value.subgraph.startswith("then_branch")

    def test_random_operators_draw_at_run_time(self, tmp_path):
        """RandomNormal is never folded into a constant (by the normaliser or the converter)."""
        from onnx import TensorProto, helper

        path = _save(
            tmp_path,
            [
                helper.make_node("RandomNormal", [], ["r"], shape=[2, 3]),
                helper.make_node("Add", ["x", "r"], ["y"]),
            ],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        )
        module = import_onnx(path, verify=False)
        x = torch.zeros(2, 3)
        assert not torch.equal(module(x), module(x))
        assert module.import_report.fallbacks == {"RandomNormal": 1}

    def test_a_mismatch_names_the_first_differing_node(self, mlp_file, monkeypatch):
        """A wrong translation (Tanh lowered as sigmoid) is traced to the Tanh node."""
        from torchbridge import onnx_ops

        monkeypatch.setitem(
            onnx_ops.LOWERINGS, "Tanh", lambda n: n.call(torch.sigmoid, *n.tensors(0))
        )
        with pytest.raises(OnnxVerificationError) as err:
            import_onnx(mlp_file)
        text = str(err.value)
        assert "the first node whose output differs is node" in text
        assert "operator Tanh (domain ai.onnx" in text

    def _int_clip(self, tmp_path) -> Path:
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper

        return _save(
            tmp_path,
            [helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")],
            [helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", 3])],
            [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", 3])],
            [
                numpy_helper.from_array(np.array(0, np.int64), "lo"),
                numpy_helper.from_array(np.array(5, np.int64), "hi"),
            ],
            opset=13,
        )

    def test_integer_clip_keeps_its_dtype(self, tmp_path):
        """Clip of int64 with int64 bounds is int64, as in onnxruntime (not float32)."""
        module = import_onnx(self._int_clip(tmp_path))
        out = module(torch.tensor([[-3, 2, 9]]))
        assert out.dtype == torch.int64 and out.tolist() == [[0, 2, 5]]

    def test_an_output_of_another_dtype_fails_verification(self, tmp_path, monkeypatch):
        """Equal values of another dtype are a mismatch, naming the output and the node."""
        from torchbridge import onnx_ops

        monkeypatch.setitem(  # what Clip lowered to when it read its bounds as floats
            onnx_ops.LOWERINGS, "Clip", lambda n: n.call(torch.clamp, *n.tensors(0), 0.0, 5.0)
        )
        with pytest.raises(OnnxVerificationError) as err:
            import_onnx(self._int_clip(tmp_path))
        text = str(err.value)
        assert "output 'y' has dtype float32 in torch and int64 in onnxruntime" in text
        assert "node 'clip' in the main graph: operator Clip" in text
        assert err.value.output == "y"
