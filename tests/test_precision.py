"""Mixed precision (torchbridge.precision): bfloat16 weights, autocast, float32 losses.

Gradients in 16 bits are compared with the float32 ones within bfloat16's
precision (8 bits of mantissa: a relative error of a few 1e-3 per operation).
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

import torchbridge  # noqa: E402
from torchbridge import julia_support as jl  # noqa: E402
from torchbridge import memory  # noqa: E402
from torchbridge.errors import PrecisionError  # noqa: E402
from torchbridge.train import TrainStep, logitcrossentropy, optimizer_from_spec  # noqa: E402

LLAMA = "hf/test/tiny-llama"
BF16_TOLERANCE = 3e-2  # relative error of a whole gradient, after a 2-layer model


def token_ids(batch: int = 3, seq: int = 9) -> torch.Tensor:
    return torch.randint(1, 40, (batch, seq), generator=torch.Generator().manual_seed(0))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def bridged_step(module, *, autocast=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward and pullback through the bridge: the logits and every parameter's gradient."""
    bm = torchbridge.bridge(module, autocast=autocast)
    bm.train()
    (logits,), pullback = bm.forward(input_ids=token_ids())
    cotangent = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    pullback(logits=cotangent.to(logits.dtype))
    grads = {n: g.clone() for n, g in zip(bm.param_names, bm.grads)}
    bm.close()
    return logits, grads


class TestBfloat16Weights:
    def test_a_bfloat16_model_runs_and_differentiates(self, finetune_models):
        """dtype="bfloat16": weights, outputs and gradients are bfloat16, close to float32's."""
        baseline = memory.snapshot()
        plain = torchbridge.load_model(LLAMA, pretrained=True)
        model = torchbridge.load_model(LLAMA, pretrained=True, dtype="bfloat16")
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        for (name, p), q in zip(model.named_parameters(), plain.parameters()):
            assert torch.equal(p, q.to(torch.bfloat16)), name  # the file's values, rounded once
        logits32, grads32 = bridged_step(plain)
        logits16, grads16 = bridged_step(model)
        assert logits16.dtype == torch.bfloat16
        assert {g.dtype for g in grads16.values()} == {torch.bfloat16}
        assert relative(logits16, logits32) < BF16_TOLERANCE
        for name, grad in grads32.items():
            assert relative(grads16[name], grad) < BF16_TOLERANCE, name
        bm = torchbridge.bridge(model)
        assert jl.model_state(bm)["dtype"] == "BFloat16"  # what Julia wraps: BFloat16 arrays
        bm.close()
        memory.assert_baseline(baseline)

    def test_torch_dtype_and_bad_names(self, finetune_models):
        """torch_dtype is dtype's other name; a name that is not a float type is a PrecisionError."""
        model = torchbridge.load_model(LLAMA, pretrained=True, torch_dtype=torch.float16)
        assert {p.dtype for p in model.parameters()} == {torch.float16}
        with pytest.raises(PrecisionError, match="not a floating-point type"):
            torchbridge.load_model(LLAMA, dtype="int8")
        with pytest.raises(PrecisionError, match="both given"):
            torchbridge.load_model(LLAMA, dtype="bfloat16", torch_dtype="float16")

    def test_other_sources_convert_after_loading(self, finetune_models, tmp_path):
        """A timm model and a local model with saved float32 weights load in bfloat16."""
        model = torchbridge.load_model("timm/test_resnet", dtype="bf16")
        assert {t.dtype for t in model.state_dict().values() if t.is_floating_point()} == {
            torch.bfloat16
        }
        torch.manual_seed(0)
        source = torchbridge.load_model("timm/test_resnet", num_classes=3)
        torchbridge.register_local_model(
            "resnet-bf16", source, architecture="timm/test_resnet", directory=tmp_path
        )
        loaded = torchbridge.load_model("local/resnet-bf16", dtype="bfloat16")
        for name, value in source.state_dict().items():
            got = loaded.state_dict()[name]
            want = value.to(torch.bfloat16) if value.is_floating_point() else value
            assert got.dtype == want.dtype and torch.equal(got, want), name


class TestAutocast:
    def test_gradients_land_in_float32_parameters(self, finetune_models):
        """autocast="bfloat16": float32 weights, outputs and gradients, within bfloat16's
        precision of plain float32 but not equal to it (the products ran in bfloat16)."""
        baseline = memory.snapshot()
        model = torchbridge.load_model(LLAMA, pretrained=True)
        logits32, grads32 = bridged_step(copy.deepcopy(model))
        logits, grads = bridged_step(model, autocast="bfloat16")
        assert logits.dtype == torch.float32
        assert {g.dtype for g in grads.values()} == {torch.float32}
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert 1e-5 < relative(logits, logits32) < BF16_TOLERANCE
        for name, grad in grads32.items():
            assert relative(grads[name], grad) < BF16_TOLERANCE, name
        memory.assert_baseline(baseline)

    def test_autocast_settings_are_checked(self, finetune_models):
        """autocast is a 16-bit type, for a float32 model; a refused one shares nothing."""
        baseline = memory.snapshot()
        with pytest.raises(PrecisionError, match="'bfloat16' or 'float16'"):
            torchbridge.bridge(torch.nn.Linear(2, 2), autocast="float32")
        with pytest.raises(PrecisionError, match="already holds torch.bfloat16"):
            torchbridge.bridge(torch.nn.Linear(2, 2).bfloat16(), autocast="bfloat16")
        memory.assert_baseline(baseline)
        with torchbridge.bridge(torch.nn.Linear(2, 2), autocast="bf16") as bm:
            assert bm.autocast is torch.bfloat16


class TestFloat32Losses:
    def test_train_step_on_a_bfloat16_model(self, finetune_models):
        """TrainStep computes the loss of bfloat16 logits in float32."""
        model = torchbridge.load_model(LLAMA, pretrained=True, dtype="bfloat16").train()
        ids = token_ids(2, 10)
        step = TrainStep(
            model,
            optimizer_from_spec({"rule": "Descent", "eta": 0.0}, model.parameters()),
            logitcrossentropy,
        )
        result = step({"input_ids": ids[:, :-1]}, ids[:, 1:])
        assert result.outputs.dtype == torch.bfloat16 and result.loss.dtype == torch.float32
        expected = logitcrossentropy(result.outputs.float(), ids[:, 1:])
        assert torch.equal(result.loss, expected)

    def test_train_step_with_bfloat16_autocast(self, finetune_models):
        """mixed_precision="bfloat16" autocasts the forward; parameters and loss stay float32."""
        model = torchbridge.load_model(LLAMA, pretrained=True).train()
        before = [p.detach().clone() for p in model.parameters()]
        ids = token_ids(2, 10)
        step = TrainStep(
            model,
            optimizer_from_spec({"rule": "Descent", "eta": 0.1}, model.parameters()),
            logitcrossentropy,
            mixed_precision="bfloat16",
        )
        result = step({"input_ids": ids[:, :-1]}, ids[:, 1:])
        assert result.outputs.dtype == torch.bfloat16 and result.loss.dtype == torch.float32
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
        with pytest.raises(PrecisionError, match="'bfloat16' or 'float16'"):
            TrainStep(model, step.optimizer, logitcrossentropy, mixed_precision="float64")

    @pytest.mark.parametrize("setting", ["dtype", "autocast"])
    def test_julia_trainer_loss_in_float32(self, finetune_models, setting):
        """TorchTrainer (fit_torch!'s step) computes the loss in float32; under autocast its
        outputs and the parameters' gradients are float32."""
        model = torchbridge.load_model(
            LLAMA, pretrained=True, **({"dtype": "bfloat16"} if setting == "dtype" else {})
        )
        bm = torchbridge.bridge(model, autocast="bfloat16" if setting == "autocast" else None)
        bm.train()
        trainer = jl.trainer(
            jl.optimizer(bm, {"rule": "Descent", "eta": 0.0}), "logitcrossentropy", output="logits"
        )
        ids = token_ids(2, 10)
        loss, (outputs,), _, _ = jl.train_step(trainer, {"input_ids": ids[:, :-1]}, ids[:, 1:])
        want = torch.bfloat16 if setting == "dtype" else torch.float32
        assert outputs.dtype == want and {g.dtype for g in bm.grads} == {want}
        assert loss == pytest.approx(float(logitcrossentropy(outputs.float(), ids[:, 1:])))
        bm.close()
