"""torchbridge.julia_support, called exactly as TorchBridge.jl calls it.

A Julia array reaches Python in one of two forms, and both are used here:

* ``julia_share(a)``: what ``DLPack.share(x, torch.from_dlpack)`` produces for a
  Julia array ``x`` of size ``a.shape``: a C-contiguous torch tensor with the
  dimensions reversed, over the same memory;
* ``julia_raw(a)``: what PythonCall passes for a raw Julia array, a
  ``juliacall.ArrayValue`` reporting the Julia size over column-major memory
  (:mod:`julia_arrays` stands in for it).

``a`` is always a Fortran-ordered numpy array standing for the Julia array.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

import torchbridge
from julia_arrays import ArrayValue
from torchbridge import julia_support as jl
from torchbridge.errors import (
    CotangentError,
    DTypeMismatchError,
    FeaturesUnavailableError,
    InputGradsError,
    NotAModuleError,
    PullbackReleasedError,
    UnknownLossError,
    UnknownOptimizerError,
    UnsupportedArrayError,
    UnsupportedDTypeError,
)
from torchbridge.julia_support.rows import ROW_FIELDS
from torchbridge.registry.entry import ModelEntry, WeightsInfo


def julia_array(*size, dtype=np.float32, seed=0):
    """A column-major array of Julia size ``size``, as Julia's ``randn(Float32, size...)``."""
    rng = np.random.default_rng(seed)
    return np.asfortranarray(rng.standard_normal(size).astype(dtype))


def julia_share(a: np.ndarray) -> torch.Tensor:
    """What DLPack.jl shares for the Julia array ``a``: reversed dims, same memory."""
    return torch.from_dlpack(a.T)


def julia_raw(a: np.ndarray) -> ArrayValue:
    """What PythonCall passes for the raw Julia array ``a``."""
    return ArrayValue(a)


def julia_receive(layout):
    """Allocate the Julia array a layout asks for (``Array{T}(undef, dims)``)."""
    dims, eltype, device, index = layout
    assert device == "cpu" and index == -1
    dtype = {"Float32": np.float32, "Float64": np.float64, "Int64": np.int64}[eltype]
    return np.zeros(dims, dtype=dtype, order="F")


class Tiny(torch.nn.Module):
    """Linear 3 -> 2 with a BatchNorm, so buffers and train mode matter."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.bn = torch.nn.BatchNorm1d(2)
        self.scale = torch.nn.Parameter(torch.tensor(2.0))  # a 0-dim parameter

    def forward(self, x):
        return self.bn(self.fc(x)) * self.scale


@pytest.fixture
def model():
    m = torchbridge.bridge(Tiny())
    yield m
    m.close()


class TestModelState:
    def test_params_and_grads_alias_the_module(self, model):
        """model_state hands out the model's own parameter and gradient memory."""
        state = jl.model_state(model)
        names = state["param_names"]
        assert names == tuple(n for n, _ in model.module.named_parameters())
        assert state["device"] == "cpu" and state["device_index"] == -1
        assert state["dtype"] == "Float32"
        i = names.index("fc.weight")
        assert state["params"][i].data_ptr() == model.module.fc.weight.data_ptr()
        assert state["grads"][i].data_ptr() == model.module.fc.weight.grad.data_ptr()

    def test_zero_dim_parameter_is_a_one_element_view(self, model):
        """A 0-dim parameter is given as a 1-element view of the same memory."""
        state = jl.model_state(model)
        scale = state["params"][state["param_names"].index("scale")]
        assert scale.shape == (1,)
        scale.fill_(5.0)
        assert model.module.scale.item() == 5.0

    def test_writes_through_dlpack_reach_torch(self, model):
        """An update made through DLPack (as DLPack.from_dlpack wraps it) changes torch's weight."""
        state = jl.model_state(model)
        view = np.from_dlpack(state["params"][state["param_names"].index("fc.bias")])
        view[:] = 7.0
        assert torch.all(model.module.fc.bias == 7.0)

    def test_non_contiguous_parameter_is_refused(self):
        """A parameter Julia cannot view without a copy is refused with a fix in the message."""
        lin = torch.nn.Linear(4, 3)
        lin.weight = torch.nn.Parameter(torch.randn(4, 3).t())
        with torchbridge.bridge(lin) as m, pytest.raises(UnsupportedArrayError, match="contiguous"):
            jl.model_state(m)


class TestForwardPullback:
    @pytest.mark.parametrize("form", [julia_share, julia_raw])
    def test_forward_layouts_and_copy_out(self, model, form):
        """forward returns layouts in Julia order and copy_out fills Julia-owned arrays."""
        model.eval()
        x = julia_array(3, 5)  # Julia (features, batch)
        outputs, pullback, layouts = jl.forward(model, form(x), grad=False)
        assert pullback is None
        assert layouts == (((2, 5), "Float32", "cpu", -1),)
        dest = julia_receive(layouts[0])
        jl.copy_out((julia_share(dest),), outputs)
        expected = model.module(torch.from_numpy(np.ascontiguousarray(x.T))).detach().numpy()
        np.testing.assert_allclose(dest, expected.T, rtol=1e-6)

    def test_forward_into_reports_layouts_only_when_they_change(self, model):
        """forward_into returns the outputs' layouts on a first call, None while they equal the expected ones, and the layouts again when they change."""
        model.eval()
        x = julia_array(3, 5)
        outputs, pb, layouts, _ = jl.forward_into(model, None, (julia_share(x),))
        assert pb is not None and layouts == (((2, 5), "Float32", "cpu", -1),)
        pb.release()
        again, pb, none, _ = jl.forward_into(model, layouts, (julia_share(x),), None, False)
        assert pb is None and none is None
        torch.testing.assert_close(again[0], outputs[0])
        _, _, changed, _ = jl.forward_into(
            model, layouts, (julia_share(julia_array(3, 4)),), None, False
        )
        assert changed == (((2, 4), "Float32", "cpu", -1),)

    def test_forward_into_addresses_read_as_the_outputs(self, model):
        """The address of each output holds exactly the output's values, in Julia order once read as a Julia array of its layout."""
        import ctypes

        model.eval()
        x = julia_array(3, 5)
        outputs, _, layouts, addresses = jl.forward_into(
            model, None, (julia_share(x),), None, False
        )
        (size, _, _, _), address = layouts[0], addresses[0]
        assert address == outputs[0].data_ptr()
        raw = (ctypes.c_float * (size[0] * size[1])).from_address(address)
        julia_view = np.frombuffer(raw, dtype=np.float32).reshape(size, order="F")
        expected = model.module(torch.from_numpy(np.ascontiguousarray(x.T))).detach().numpy()
        np.testing.assert_array_equal(julia_view, expected.T)

    def test_forward_into_gives_non_contiguous_outputs_an_address(self):
        """A module returning a transposed view gets a contiguous copy with an address, values unchanged."""

        class Transposed(torch.nn.Module):
            def forward(self, x):
                return x.t() * 2

        with torchbridge.bridge(Transposed()) as bm:
            x = julia_array(3, 4)
            outputs, _, layouts, addresses = jl.forward_into(
                bm, None, (julia_share(x),), None, False
            )
            assert outputs[0].is_contiguous() and addresses == (outputs[0].data_ptr(),)
            torch.testing.assert_close(outputs[0], torch.from_numpy(x.copy()) * 2)
            assert layouts == (((4, 3), "Float32", "cpu", -1),)

    def test_forward_into_passes_keyword_inputs(self, model):
        """Keyword inputs come as one mapping and reach the module as keywords."""

        class Scaled(torch.nn.Module):
            def forward(self, x, *, scale):
                return x * scale

        with torchbridge.bridge(Scaled()) as bm:
            x = julia_array(3, 4)
            outputs, *_ = jl.forward_into(bm, None, (julia_share(x),), {"scale": 3.0}, False)
            torch.testing.assert_close(outputs[0], torch.from_numpy(np.ascontiguousarray(x.T)) * 3)

    def test_addresses_only_for_contiguous_cpu_tensors(self):
        """addresses gives None for None, a non-contiguous tensor, and conjugated or negated views (their memory holds the values before the flag)."""
        t = torch.arange(6.0).reshape(2, 3)
        assert jl.addresses((t, None, t.t())) == (t.data_ptr(), None, None)
        z = torch.tensor([1 + 2j, 3 - 1j])
        assert jl.addresses((z, z.conj(), torch._neg_view(z))) == (z.data_ptr(), None, None)

    @pytest.mark.parametrize("view", ["conj", "neg"])
    def test_forward_into_resolves_lazy_views_before_giving_an_address(self, view):
        """A module returning x.conj() (or a negated view) gets an address whose bytes are the values the output reads."""
        import ctypes

        class Lazy(torch.nn.Module):
            def forward(self, x):
                return x.conj() if view == "conj" else torch._neg_view(x)

        z = np.asfortranarray(np.array([[1 + 2j, 3 - 1j], [-2 + 0.5j, 4j]], dtype=np.complex64))
        with torchbridge.bridge(Lazy()) as bm:
            outputs, _, layouts, addresses = jl.forward_into(
                bm, None, (julia_share(z),), None, False
            )
            assert layouts == (((2, 2), "ComplexF32", "cpu", -1),)
            raw = (ctypes.c_char * z.nbytes).from_address(addresses[0])
            read = np.frombuffer(raw, dtype=np.complex64).reshape(2, 2, order="F")
            np.testing.assert_array_equal(read, np.conj(z) if view == "conj" else -z)

    def test_forward_into_releases_the_pullback_when_an_output_cannot_cross(self):
        """An output without a Julia element type (float8) is an error that leaves no live pullback."""

        class Float8(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(3, 2)

            def forward(self, x):
                return self.lin(x).to(torch.float8_e4m3fn)

        with torchbridge.bridge(Float8()) as bm:
            before = torchbridge.memory.stats().live_pullbacks
            with pytest.raises(UnsupportedDTypeError):
                jl.forward_into(bm, None, (julia_share(julia_array(3, 4)),))
            assert torchbridge.memory.stats().live_pullbacks == before

    def test_pullback_gradients_match_autograd(self, model):
        """The pullback's input and parameter gradients equal plain autograd's."""
        x = julia_array(3, 4)
        dy = julia_array(2, 4, seed=1)
        outputs, pb, _ = jl.forward(model, julia_share(x))
        grads, layouts, addresses = jl.pullback(pb, julia_share(dy))
        assert layouts == (((3, 4), "Float32", "cpu", -1),)
        assert addresses == (grads[0].data_ptr(),)
        dx = julia_receive(layouts[0])
        jl.copy_out((julia_share(dx),), grads)

        ref = Tiny()
        ref.load_state_dict(model.module.state_dict())
        xt = torch.from_numpy(np.ascontiguousarray(x.T)).requires_grad_(True)
        ref(xt).backward(torch.from_numpy(np.ascontiguousarray(dy.T)))
        np.testing.assert_allclose(dx, xt.grad.numpy().T, rtol=1e-5, atol=1e-6)
        state = jl.model_state(model)
        np.testing.assert_allclose(
            state["grads"][state["param_names"].index("fc.weight")].numpy(),
            ref.fc.weight.grad.numpy(),
            rtol=1e-5,
            atol=1e-6,
        )
        assert not pb.live

    def test_failed_pullback_is_released(self, model):
        """A pullback that fails on a bad cotangent is released, so the ledger holds nothing."""
        before = torchbridge.memory.stats()
        outputs, pb, _ = jl.forward(model, julia_share(julia_array(3, 4)))
        with pytest.raises(CotangentError):
            jl.pullback(pb, julia_share(julia_array(5, 4)))
        assert not pb.live
        assert torchbridge.memory.stats().live_pullbacks == before.live_pullbacks
        with pytest.raises(PullbackReleasedError):
            jl.pullback(pb, julia_share(julia_array(2, 4)))

    def test_release_is_idempotent(self, model):
        """release frees a live pullback once and accepts None."""
        _, pb, _ = jl.forward(model, julia_share(julia_array(3, 4)))
        assert jl.release(pb) is True
        assert jl.release(pb) is False
        assert jl.release(None) is False

    def test_input_grads_false_gives_none(self, model):
        """With input_grads=False the pullback returns no input gradient and no layout."""
        _, pb, _ = jl.forward(model, julia_share(julia_array(3, 4)), input_grads=False)
        grads, layouts, addresses = jl.pullback(pb, julia_share(julia_array(2, 4)))
        assert grads == (None,) and layouts == (None,) and addresses == (None,)

    def test_copy_out_skips_none_and_checks_counts(self):
        """copy_out skips None entries and refuses mismatched lengths."""
        dest = np.zeros((2, 3), dtype=np.float32, order="F")
        src = torch.arange(6, dtype=torch.float32).reshape(3, 2)
        jl.copy_out((julia_share(dest), None), (src, None))
        np.testing.assert_array_equal(dest, src.numpy().T)
        with pytest.raises(UnsupportedArrayError):
            jl.copy_out((julia_share(dest),), (src, src))

    def test_many_steps_leave_the_ledger_at_baseline(self, model):
        """A hundred forward/pullback/copy_out steps leave no live pullback behind."""
        baseline = torchbridge.memory.snapshot()
        for i in range(100):
            outputs, pb, layouts = jl.forward(model, julia_share(julia_array(3, 4, seed=i)))
            y = julia_receive(layouts[0])
            jl.copy_out((julia_share(y),), outputs)
            jl.pullback(pb, julia_share(np.asfortranarray(np.ones_like(y))))
        torchbridge.memory.assert_baseline(baseline)


class TestMemory:
    def test_stats_are_plain_values(self, model):
        """memory_stats returns ints and dicts of ints, as Julia converts them."""
        stats = jl.memory_stats()
        assert stats["open_models"] >= 1
        assert all(isinstance(v, int) for v in stats["shared_bytes"].values())

    def test_scope_releases_unpulled_pullbacks(self, model):
        """A scope opened and closed from Julia releases the pullbacks created inside it."""
        before = jl.memory_stats()["live_pullbacks"]
        handle = jl.scope_enter()
        _, pb, _ = jl.forward(model, julia_share(julia_array(3, 4)))
        assert jl.memory_stats()["live_pullbacks"] == before + 1
        jl.scope_exit(handle)
        assert not pb.live
        assert jl.memory_stats()["live_pullbacks"] == before


class TestRegistryRows:
    def test_entry_row_is_plain_and_reversed(self):
        """entry_row gives plain values with the input size in both orders."""
        entry = ModelEntry(
            id="timm/tiny",
            source="timm",
            name="tiny",
            task="image-classification",
            pretrained=True,
            weights=WeightsInfo(location="hf-hub:x/tiny", cached=True),
            input_size=(3, 32, 48),
            mean=(0.5, 0.5, 0.5),
            num_classes=10,
            tags=("cnn",),
        )
        row = jl.entry_row(entry)
        assert row["input_size"] == [3, 32, 48]
        assert row["julia_input_size"] == [48, 32, 3]
        assert row["cached"] is True and row["pretrained"] is True
        assert row["std"] is None and row["tags"] == ["cnn"]
        assert set(row) == set(ROW_FIELDS)

    def test_registry_rows_filter_by_source(self):
        """registry_rows passes its filters to list_models, as models(; source) does."""
        rows = jl.registry_rows(None, source="torchvision", pretrained=None, task=None)
        assert rows and all(r["source"] == "torchvision" for r in rows)
        assert all(set(r) == set(ROW_FIELDS) for r in rows[:5])

    def test_search_and_info_rows(self):
        """search_rows and info_row return rows for known ids."""
        found = jl.search_rows("resnet", limit=3)
        assert 0 < len(found) <= 3
        assert jl.info_row(found[0]["id"])["id"] == found[0]["id"]


class TestFastAI:
    """What the FastAI extension calls: the rows it registers, the variants' head swap."""

    def test_fastai_rows_are_pretrained_tags(self):
        """One row per tagged timm image classifier with weights, as three equal columns."""
        rows = jl.fastai_rows(source="timm")
        ids, checkpoints = rows["id"], rows["checkpoint"]
        assert len(ids) == len(rows["description"]) == len(checkpoints) > 0
        assert len(set(ids)) == len(ids)
        assert "timm/resnet18.a1_in1k" in ids
        assert "timm/resnet18" not in ids  # an architecture name, not a set of weights
        for model_id, tag in zip(ids, checkpoints, strict=True):
            assert model_id.startswith("timm/") and model_id.endswith("." + tag)
        expected = {
            e.id
            for e in torchbridge.list_models(
                source="timm", pretrained=True, task="image-classification"
            )
            if "." in e.name
        }
        assert set(ids) == expected

    def test_feature_variant_closes_the_classifier_and_keeps_the_body(self):
        """The backbone of FastAI rows: timm's unpooled feature map, Julia (W, H, C, N)."""
        import timm

        module = timm.create_model("test_resnet").eval()
        body = {k: v.clone() for k, v in module.state_dict().items() if not k.startswith("fc.")}
        old = torchbridge.bridge(module)
        open_before = jl.memory_stats()["open_models"]
        new = jl.feature_variant(old, model_id="timm/test_resnet")
        assert old.closed and not new.closed
        assert jl.memory_stats()["open_models"] == open_before
        assert not any(n.startswith("fc.") for n in new.param_names)
        x = julia_share(julia_array(64, 64, 3, 2))  # Julia (W, H, C, N)
        outputs, pullback, layouts = jl.forward(new, x, grad=False)
        assert pullback is None
        assert layouts[0][0] == (2, 2, module.num_features, 2)  # Julia (W, H, C, N)
        for key, value in body.items():
            assert torch.equal(module.state_dict()[key], value), key
        new.close()

    def test_feature_variant_refused_leaves_the_model_open(self):
        vit = torchbridge.bridge(torchbridge.load_model("torchvision/vit_b_16"))
        with pytest.raises(FeaturesUnavailableError, match="VisionTransformer"):
            jl.feature_variant(vit, model_id="torchvision/vit_b_16")
        assert not vit.closed
        vit.close()


# Optimisers.jl 0.4's field names for each rule, as optimiser_spec builds them
# from fieldnames(typeof(rule)) with the rule's defaults.
OPTIMISERS_JL_RULES = {
    "Descent": {"eta": 0.1},
    "Momentum": {"eta": 0.01, "rho": 0.9},
    "Nesterov": {"eta": 0.001, "rho": 0.9},
    "Adam": {"eta": 0.001, "beta": (0.9, 0.999), "epsilon": 1e-8},
    "AdamW": {"eta": 0.001, "beta": (0.9, 0.999), "lambda": 0.0, "epsilon": 1e-8, "couple": True},
    "RMSProp": {"eta": 0.001, "rho": 0.9, "epsilon": 1e-8, "centred": False},
    "AdaGrad": {"eta": 0.1, "epsilon": 1e-8},
}


class TestTraining:
    @pytest.mark.parametrize("rule", sorted(OPTIMISERS_JL_RULES))
    def test_every_rule_spec_builds_an_optimizer(self, model, rule):
        """The spec Julia builds from each supported Optimisers.jl rule is accepted and steps."""
        spec = {"rule": rule, **OPTIMISERS_JL_RULES[rule]}
        opt = jl.optimizer(model, spec, schedule=None)
        before = model.module.fc.weight.detach().clone()
        for g in model.grads:
            g.fill_(1.0)
        assert jl.optimizer_step(opt) == pytest.approx(spec["eta"])
        assert not torch.equal(model.module.fc.weight, before)

    def test_unknown_rule_is_a_typed_error(self, model):
        """A rule torch cannot perform is refused by name."""
        with pytest.raises(UnknownOptimizerError, match="Lion"):
            jl.optimizer(model, {"rule": "Lion", "eta": 0.1})

    def test_step_uses_the_buffers_julia_wrote(self, model):
        """optimizer_step applies exactly the gradient in the shared buffers (Descent)."""
        opt = jl.optimizer(model, {"rule": "Descent", "eta": 0.5})
        model.zero_grad()
        state = jl.model_state(model)
        bias_grad = state["grads"][state["param_names"].index("fc.bias")]
        np.from_dlpack(bias_grad)[:] = 2.0  # Julia writes fc.bias's gradient
        before = model.module.fc.bias.detach().clone()
        jl.optimizer_step(opt)
        torch.testing.assert_close(model.module.fc.bias.detach(), before - 1.0)

    def test_schedule_and_set_learning_rate(self, model):
        """A step schedule scales η per step, and set_learning_rate changes its base."""
        opt = jl.optimizer(
            model,
            {"rule": "Descent", "eta": 0.1},
            schedule={"schedule": "step", "step_size": 1, "gamma": 0.5},
        )
        lrs = [jl.optimizer_step(opt) for _ in range(3)]
        assert lrs == pytest.approx([0.1, 0.05, 0.025])
        jl.set_learning_rate(opt, 1.0)
        assert opt.scheduler.base_lrs == [1.0]

    @pytest.mark.parametrize("form", [julia_share, julia_raw])
    def test_train_step_lowers_the_loss(self, form):
        """Torch-native steps on Julia batches lower a Flux loss and keep the buffers shared."""
        torch.manual_seed(0)
        m = torchbridge.bridge(
            torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        )
        grads_before = [g.data_ptr() for g in m.grads]
        opt = jl.optimizer(m, {"rule": "Adam", "eta": 0.05, "beta": (0.9, 0.999), "epsilon": 1e-8})
        t = jl.trainer(opt, "logitcrossentropy", loss_options=None)
        x = julia_array(3, 32)  # Julia (features, batch)
        labels = (x[0] > 0).astype(np.int64)
        y = np.asfortranarray(
            np.stack([labels == 0, labels == 1]).astype(np.float32)
        )  # one-hot (2, 32)
        losses = []
        for _ in range(30):
            loss, outputs, layouts, addresses = jl.train_step(t, form(x), form(y))
            losses.append(loss)
        assert layouts == (((2, 32), "Float32", "cpu", -1),)
        # the output as Julia receives it: its address holds its values
        at = (ctypes.c_float * outputs[0].numel()).from_address(addresses[0])
        assert torch.equal(torch.frombuffer(at, dtype=torch.float32).view(32, 2), outputs[0])
        assert losses[-1] < 0.5 * losses[0]
        assert [p.grad.data_ptr() for p in m.module.parameters()] == grads_before
        m.close()

    def test_unknown_loss_is_a_typed_error(self, model):
        """A loss without a torch translation is refused with the supported names."""
        opt = jl.optimizer(model, {"rule": "Descent"})
        with pytest.raises(UnknownLossError, match="mse"):
            jl.trainer(opt, "hinge_loss")


class TestTrainerAfterGradsReplaced:
    def test_step_after_zero_grad_set_to_none_applies_the_real_gradient(self):
        """After module.zero_grad(set_to_none=True) the torch-native step applies this batch's gradient, not zeros."""
        torch.manual_seed(0)
        module = torch.nn.Linear(3, 2)
        reference = torch.nn.Linear(3, 2)
        reference.load_state_dict(module.state_dict())
        m = torchbridge.bridge(module)
        opt = jl.optimizer(m, {"rule": "Descent", "eta": 0.1})
        t = jl.trainer(opt, "mse")
        x, y = torch.randn(4, 3), torch.randn(4, 2)
        module.zero_grad(set_to_none=True)  # what a user's own torch code may do between steps
        jl.train_step(t, x, y)
        torch.nn.functional.mse_loss(reference(x), y).backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= 0.1 * p.grad
        for got, want in zip(module.parameters(), reference.parameters()):
            torch.testing.assert_close(got, want)
        assert [p.grad is g for p, g in zip(m.parameters, m.grads)] == [True, True]
        m.close()


class TestBadInputs:
    """The Julia-facing calls reach arrays through the exchange and give its typed errors;
    every refused call leaves the ledger at its baseline."""

    def test_complex_batch_is_a_dtype_mismatch(self, model):
        """A ComplexF32 batch for a Float32 model is refused by forward_into and train_step."""
        baseline = torchbridge.memory.snapshot()
        x = np.asfortranarray(julia_array(3, 4).astype(np.complex64))
        for form in (julia_share, julia_raw):
            with pytest.raises(DTypeMismatchError, match="ComplexF32"):
                jl.forward_into(model, None, (form(x),))
        t = jl.trainer(jl.optimizer(model, {"rule": "Descent"}), "mse")
        with pytest.raises(DTypeMismatchError, match="ComplexF32"):
            jl.train_step(t, julia_raw(x), julia_raw(julia_array(2, 4)))
        torchbridge.memory.assert_baseline(baseline)

    def test_big_endian_batch_is_refused(self, model):
        """A big-endian batch is an UnsupportedDTypeError naming the conversion."""
        baseline = torchbridge.memory.snapshot()
        with pytest.raises(UnsupportedDTypeError, match=r"astype\('<f4'\)"):
            jl.forward_into(model, None, (julia_array(3, 4).astype(">f4"),))
        torchbridge.memory.assert_baseline(baseline)

    def test_reversed_batch_crosses_as_one_counted_copy(self, model):
        """A batch with negative strides gives the outputs of the same values in order."""
        x = julia_array(3, 4)
        before = torchbridge.memory.stats().negative_stride_copies
        model.eval()
        reversed_view = x[:, ::-1]  # a Julia view over a reversed range of the batch
        got, pb, _, _ = jl.forward_into(model, None, (julia_raw(reversed_view),), grad=False)
        want, _, _, _ = jl.forward_into(
            model, None, (julia_raw(np.asfortranarray(reversed_view)),), grad=False
        )
        assert pb is None
        torch.testing.assert_close(got[0], want[0])  # equal up to the summation order
        assert torchbridge.memory.stats().negative_stride_copies == before + 1

    def test_object_cotangent_is_a_cotangent_error_and_releases(self, model):
        """An object-dtype cotangent is a CotangentError; the failed pullback is released."""
        baseline = torchbridge.memory.snapshot()
        _, pb, _, _ = jl.forward_into(model, None, (julia_share(julia_array(3, 4)),))
        with pytest.raises(CotangentError, match="dtype object"):
            jl.pullback(pb, np.array([[None] * 2] * 4, dtype=object))
        assert not pb.live
        torchbridge.memory.assert_baseline(baseline)

    @pytest.mark.parametrize("flag", [1, "true", None, [True, True]])
    def test_input_grads_misuse(self, model, flag):
        """An input_grads that is not a Bool (or one per input) is an InputGradsError."""
        baseline = torchbridge.memory.snapshot()
        with pytest.raises(InputGradsError):
            jl.forward_into(model, None, (julia_share(julia_array(3, 4)),), None, True, flag)
        torchbridge.memory.assert_baseline(baseline)

    @pytest.mark.parametrize(
        "call",
        [
            lambda m: jl.model_state(m),
            lambda m: jl.forward(m, julia_share(julia_array(3, 4))),
            lambda m: jl.forward_into(m, None, (julia_share(julia_array(3, 4)),)),
            lambda m: jl.output_sizes(m, [(3, 4)]),
            lambda m: jl.optimizer(m, {"rule": "Descent"}),
            lambda m: jl.feature_variant(m, model_id="timm/resnet18"),
        ],
        ids=["model_state", "forward", "forward_into", "output_sizes", "optimizer", "features"],
    )
    def test_calls_that_take_a_model_refuse_anything_else(self, call):
        """Every call that takes a bridged model refuses a module, an id or an array with a
        NotAModuleError that says what to pass."""
        with pytest.raises(NotAModuleError, match="bridge it first"):
            call(Tiny())
        with pytest.raises(NotAModuleError, match="reads as a model id"):
            call("timm/resnet18")
        with pytest.raises(NotAModuleError, match="expected a BridgedModel"):
            call(np.ones(3, np.float32))


def test_every_error_class_is_importable_from_the_package():
    """except torchbridge.TorchBridgeError works, and every error class is a top-level name."""
    from torchbridge import errors

    for name in errors.__all__:
        assert getattr(torchbridge, name) is getattr(errors, name)
        assert name in torchbridge.__all__
    try:
        torchbridge.load_model("nosuchsource/nosuchmodel")
    except torchbridge.TorchBridgeError as exc:
        assert isinstance(exc, torchbridge.UnknownSourceError | torchbridge.UnknownModelError)
    else:
        raise AssertionError("an unknown model id must raise")
