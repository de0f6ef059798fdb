"""Bad input gets a typed error that says what to do, and leaves nothing allocated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchbridge
from dlpack_producer import CountingProducer
from models import mlp
from torchbridge import memory
from torchbridge.errors import (
    BridgeError,
    CotangentError,
    DeviceMismatchError,
    DTypeMismatchError,
    InputGradsError,
    InputShapeError,
    ModelClosedError,
    NotAModuleError,
    PullbackReleasedError,
    TorchBridgeError,
    UnsupportedArrayError,
    UnsupportedDTypeError,
)


@pytest.fixture
def model():
    bm = torchbridge.bridge(mlp(torch.float32))
    baseline = memory.snapshot()
    yield bm
    memory.assert_baseline(baseline)  # every test below must leave nothing behind
    bm.close()


def test_every_error_is_a_torchbridge_error():
    """All bridge errors share one base class and the builtin a Python user expects."""
    assert issubclass(InputShapeError, (TorchBridgeError, ValueError))
    assert issubclass(UnsupportedDTypeError, TypeError)
    assert issubclass(PullbackReleasedError, RuntimeError)


def test_unsupported_dtype(model):
    """A producer exporting a type torch cannot read is refused, and its buffer released."""
    producer = CountingProducer(np.ones((2, 6), np.float32), dtype_code=4)
    with pytest.raises(UnsupportedDTypeError, match="convert it"):
        model.forward(producer)
    assert producer.deleted == 1


def test_dtype_mismatch_names_the_julia_conversion(model):
    """A Float64 batch for a Float32 model says how to convert it in Julia."""
    with pytest.raises(DTypeMismatchError, match=r"Float32\.\(x\)"):
        model.forward(np.ones((2, 6), np.float64))


def test_wrong_shape_names_both_orders(model):
    """A batch of the wrong width is an InputShapeError naming torch and Julia shapes."""
    with pytest.raises(InputShapeError, match=r"torch \(2, 5\) / Julia \(5, 2\)") as info:
        model.forward(np.ones((2, 5), np.float32))
    assert "Julia dimensions are the reverse" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_wrong_rank_for_a_conv_net():
    """A 2-D array for a conv net is an InputShapeError, not a bare torch error."""
    bm = torchbridge.bridge(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(InputShapeError):
        bm.forward(np.ones((3, 8), np.float32))
    bm.close()


def test_declared_input_shapes_are_checked_before_running():
    """With input_shapes, a misfit input is refused before the module runs."""
    calls = []
    module = torch.nn.Linear(6, 2)
    module.register_forward_pre_hook(lambda m, i: calls.append(1))
    bm = torchbridge.bridge(module, input_shapes=[(None, 6)])
    with pytest.raises(InputShapeError, match=r"Expected torch \(\*, 6\) / Julia \(6, \*\)"):
        bm.forward(np.ones((4, 5), np.float32))
    with pytest.raises(InputShapeError, match="takes 1 input"):
        bm.forward(np.ones((4, 6), np.float32), np.ones((4, 6), np.float32))
    assert calls == []
    bm.forward(np.ones((4, 6), np.float32), grad=False)
    assert calls == [1]
    bm.close()


def test_device_mismatch(model):
    """An input on another device than the model is refused and names both devices."""
    with pytest.raises(DeviceMismatchError, match="the model is on cpu"):
        model.forward(torch.empty(2, 6, device="meta"))


@pytest.mark.parametrize("bad", [[[1.0] * 6] * 2, "x", 1.5])
def test_non_arrays(model, bad):
    """Lists, strings and scalars are not arrays the bridge can view."""
    with pytest.raises(UnsupportedArrayError):
        model.forward(bad)


def test_cotangent_shape_dtype_and_count(model):
    """A cotangent that does not fit its output is refused and the pullback stays usable."""
    (y,), pullback = model.forward(np.ones((3, 6), np.float32))
    with pytest.raises(CotangentError, match=r"torch shape \(3, 4\) \(Julia size \(4, 3\)\)"):
        pullback(np.ones((4, 3), np.float32))
    with pytest.raises(CotangentError, match=r"\(Float64\) but output 0 is"):
        pullback(np.ones((3, 4), np.float64))
    with pytest.raises(CotangentError, match="expected 1 cotangent"):
        pullback(np.ones((3, 4), np.float32), np.ones((3, 4), np.float32))
    with pytest.raises(CotangentError, match="not an array"):
        pullback("nope")
    assert pullback.live
    (gx,) = pullback(np.ones((3, 4), np.float32))
    assert gx.shape == (3, 6)


def test_pullback_twice(model):
    """A pullback is one-shot: the second call raises and says why."""
    (y,), pullback = model.forward(np.ones((3, 6), np.float32))
    pullback(np.ones((3, 4), np.float32))
    with pytest.raises(PullbackReleasedError, match="one-shot"):
        pullback(np.ones((3, 4), np.float32))


def test_pullback_after_release(model):
    """Calling a released pullback raises; releasing twice is harmless."""
    (y,), pullback = model.forward(np.ones((3, 6), np.float32))
    assert pullback.release()
    assert not pullback.release()
    with pytest.raises(PullbackReleasedError, match="was released"):
        pullback(np.ones((3, 4), np.float32))


def test_forward_that_raises_reaches_the_caller(model):
    """The module's own exception reaches the caller unchanged and nothing stays held."""

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise KeyError("missing head")

    bm = torchbridge.bridge(Broken())
    base = memory.snapshot()
    with pytest.raises(KeyError, match="missing head"):
        bm.forward(np.ones(3, np.float32))
    memory.assert_baseline(base)
    bm.close()


def test_closed_model():
    """A closed model refuses to run and says how to get a new one."""
    bm = torchbridge.bridge(mlp(torch.float32))
    bm.close()
    bm.close()  # idempotent
    with pytest.raises(ModelClosedError, match="bridge the module again"):
        bm.forward(np.ones((2, 6), np.float32))
    with pytest.raises(ModelClosedError):
        bm.train()
    assert all(p.grad is None for p in bm.module.parameters())


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (lambda x: x, "wrap it in a torch.nn.Module"),
        ("timm/resnet18", r"torchbridge.load_model\('timm/resnet18'\)"),
        (np.ones(3, np.float32), "An array is an input"),
        (torch.nn.Linear(2, 2).state_dict(), "load_state_dict"),
        (42, "Load one with torchbridge.load_model"),
    ],
    ids=["function", "model-id", "array", "state-dict", "int"],
)
def test_not_a_module(value, hint):
    """bridge() of something that is not a torch module is a NotAModuleError (a TypeError)
    naming what it got and how to make a module of it; nothing is shared."""
    before = memory.stats()
    with pytest.raises(NotAModuleError, match=hint) as info:
        torchbridge.bridge(value)
    assert isinstance(info.value, (BridgeError, TypeError))
    assert f"got {type(value).__name__}" in str(info.value)
    assert memory.stats() == before


def test_bridging_a_bridged_model():
    """bridge() of a BridgedModel says it is bridged already."""
    with torchbridge.bridge(torch.nn.Linear(2, 2)) as bm:
        with pytest.raises(NotAModuleError, match="bridged already"):
            torchbridge.bridge(bm)


class ComplexLinear(torch.nn.Module):
    """A model with complex parameters, which takes complex inputs."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(2, 3, dtype=torch.complex64))

    def forward(self, x):
        return (x @ self.weight.T).abs()


class TestComplexInputs:
    def test_complex_input_to_a_real_model_names_both_types(self, model):
        """A ComplexF32 batch for a Float32 model is a DTypeMismatchError naming both types,
        raised before the module runs."""
        calls = []
        handle = model.module.register_forward_pre_hook(lambda m, i: calls.append(1))
        x = (np.ones((2, 6)) + 1j).astype(np.complex64)
        with pytest.raises(DTypeMismatchError, match="complex64") as info:
            model.forward(x)
        handle.remove()
        assert "ComplexF32" in str(info.value) and "real torch.float32 (Float32)" in str(info.value)
        assert calls == []

    def test_complex_keyword_input_is_named(self):
        """A complex keyword input is named by its keyword."""

        class Scale(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(3))

            def forward(self, x, *, shift):
                return x * self.w + shift

        with torchbridge.bridge(Scale()) as bm:
            base = memory.snapshot()
            with pytest.raises(DTypeMismatchError, match="input shift= is a torch.complex128"):
                bm.forward(np.ones(3, np.float32), shift=np.ones(3, np.complex128))
            memory.assert_baseline(base)

    def test_a_complex_model_takes_complex_inputs(self):
        """A model with complex parameters is not refused its complex inputs, and its gradient
        matches torch autograd."""
        torch.manual_seed(0)
        with torchbridge.bridge(ComplexLinear()) as bm:
            x = (np.arange(6).reshape(2, 3) + 1j).astype(np.complex64)
            (y,), pb = bm.forward(x)
            (gx,) = pb(np.ones((2, 2), np.float32))
            xt = torch.from_numpy(x).requires_grad_(True)
            ref = bm.module(xt)
            (gref,) = torch.autograd.grad(ref, xt, torch.ones(2, 2))
        assert torch.allclose(y, ref.detach()) and torch.allclose(gx, gref)

    def test_refused_input_releases_the_foreign_buffer_at_once(self, model):
        """A refused input's view is dropped before the error reaches the caller: the producer's
        deleter has run while the caller still holds the exception."""
        producer = CountingProducer((np.ones((2, 6)) + 1j).astype(np.complex64))
        with pytest.raises(DTypeMismatchError) as info:
            model.forward(producer)
        assert info.value is not None  # the exception, and its traceback, are still alive
        assert producer.exported == producer.deleted == 1


class TestCotangentKinds:
    @pytest.mark.parametrize(
        ("cotangent", "match"),
        [
            (np.array([[None] * 4] * 3, dtype=object), "dtype object"),
            (np.ones((3, 4), ">f4"), "big-endian"),
            (np.ones((3, 4), np.complex64), r"complex64 \(ComplexF32\) but output 0"),
            (np.ones((3, 4), np.int64), r"int64 \(Int64\) but output 0"),
            (np.ones((4, 3), np.float32), "a cotangent has its output's shape|has torch shape"),
            (np.float32(1.0), r"has torch shape \(\) \(Julia size \(\)\)"),
            ([[1.0] * 4] * 3, "not an array"),
        ],
        ids=["object", "big-endian", "complex", "int", "shape", "scalar", "list"],
    )
    def test_wrong_cotangent_is_a_cotangent_error(self, model, cotangent, match):
        """A cotangent of a wrong kind, type or shape is a CotangentError; the pullback stays
        live and holds no more than it did."""
        (y,), pullback = model.forward(np.ones((3, 6), np.float32))
        held = memory.stats().held_buffers
        with pytest.raises(CotangentError, match=match):
            pullback(cotangent)
        assert pullback.live and memory.stats().held_buffers == held
        pullback.release()

    def test_reversed_cotangent_is_copied_and_used(self, model):
        """A reversed (negative-stride) cotangent gives the gradient of its values."""
        (y,), pullback = model.forward(np.ones((3, 6), np.float32))
        dy = np.arange(12, dtype=np.float32).reshape(3, 4)
        (gx,) = pullback(dy[::-1])
        (y,), pullback = model.forward(np.ones((3, 6), np.float32))
        (gx_ref,) = pullback(np.ascontiguousarray(dy[::-1]))
        assert torch.equal(gx, gx_ref)

    def test_none_is_a_zero_cotangent(self, model):
        """None is the documented zero cotangent: every gradient is zero."""
        (y,), pullback = model.forward(np.ones((3, 6), np.float32))
        (gx,) = pullback(None)
        assert torch.equal(gx, torch.zeros(3, 6))
        assert all(not g.any() for g in model.grads)


class TestInputGrads:
    @pytest.mark.parametrize(
        ("flag", "match"),
        [
            ("yes", "got str 'yes'"),
            (1, "got int 1"),
            (None, "got NoneType None"),
            (["no"], "not bools: \\['no'\\]"),
            ([True, False], "2 entries for 1 positional"),
            ({3: True}, r"names \[3\]"),
            ({0: "yes"}, "maps inputs to bools"),
        ],
        ids=["str", "int", "None", "str-entries", "too-long", "unknown-position", "non-bool-value"],
    )
    def test_misuse_is_a_typed_error(self, model, flag, match):
        """An input_grads that is not a bool, one bool per positional input or a mapping to bools
        is an InputGradsError (both a TypeError and a ValueError), before the module runs."""
        calls = []
        handle = model.module.register_forward_pre_hook(lambda m, i: calls.append(1))
        with pytest.raises(InputGradsError, match=match) as info:
            model.forward(np.ones((2, 6), np.float32), input_grads=flag)
        handle.remove()
        assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
        assert calls == []

    def test_numpy_bools_are_bools(self, model):
        """numpy's bool scalars count as bools, one or one per input."""
        for flag in (np.bool_(False), [np.bool_(False)], np.array([False])):
            (y,), pullback = model.forward(np.ones((2, 6), np.float32), input_grads=flag)
            assert pullback(np.ones((2, 4), np.float32)) == (None,)

    @pytest.mark.parametrize(
        "flag", [[True, True], {1: True}, {"mask": True}], ids=["sequence", "position", "keyword"]
    )
    def test_gradient_asked_of_an_integer_input(self, flag):
        """Naming a token-id or mask input as wanting a gradient is refused: it has none."""

        class Lookup(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = torch.nn.Embedding(5, 3)

            def forward(self, x, ids, mask=None):
                return x + self.embed(ids).sum() * (1 if mask is None else mask.sum())

        with torchbridge.bridge(Lookup()) as bm:
            base = memory.snapshot()
            x, ids, mask = np.ones(3, np.float32), np.array([1, 2]), np.ones(2, np.int64)
            with pytest.raises(InputGradsError, match="torch.int64 tensor") as info:
                bm.forward(x, ids, mask=mask, input_grads=flag)
            assert "has none" in str(info.value)
            memory.assert_baseline(base)
            # input_grads=True differentiates the float input and skips the others
            (y,), pullback = bm.forward(x, ids, mask=mask)
            gx, gids, gmask = pullback(np.ones(3, np.float32))
            assert gx.shape == (3,) and gids is None and gmask is None
