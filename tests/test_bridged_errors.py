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
    CotangentError,
    DeviceMismatchError,
    DTypeMismatchError,
    InputShapeError,
    ModelClosedError,
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


def test_not_a_module():
    """bridge() of something that is not a torch module says what to pass."""
    with pytest.raises(TypeError, match="load_model"):
        torchbridge.bridge(lambda x: x)
