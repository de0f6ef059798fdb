"""Read-only memory, negative strides, byte order, every DLPack dtype, capsule versions: the
exchange's explicit contracts."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest
import torch

import torchbridge
from dlpack_producer import CountingProducer
from julia_arrays import ArrayValue
from torchbridge import exchange, memory
from torchbridge.errors import ReadOnlyArrayError, UnsupportedArrayError, UnsupportedDTypeError
from torchbridge.exchange import copy_into, julia_layout, to_torch


class AddsOneInPlace(torch.nn.Module):
    """A model that works in place on its input, as some preprocessing layers do."""

    def forward(self, x):
        return x.add_(1.0)


class TestReadOnlyInputs:
    def test_read_only_numpy_is_copied_once_and_counted(self):
        """A read-only numpy array is copied once, the copy is counted, and the original is never written."""
        a = np.arange(6, dtype=np.float32)
        a.flags.writeable = False
        before = memory.stats().read_only_copies
        t = to_torch(a)
        assert t.data_ptr() != a.ctypes.data
        assert memory.stats().read_only_copies == before + 1
        t += 1
        assert np.array_equal(a, np.arange(6, dtype=np.float32))

    def test_in_place_model_on_a_read_only_memory_map(self, tmp_path):
        """A model that writes into its input runs on np.load(mmap_mode='r') without a crash or a write."""
        path = tmp_path / "batch.npy"
        np.save(path, np.zeros((2, 3), np.float32))
        x = np.load(path, mmap_mode="r")
        with torchbridge.bridge(AddsOneInPlace()) as m:
            (y,), _ = m.forward(x, grad=False)
        assert torch.equal(y, torch.ones(2, 3))
        assert np.array_equal(np.load(path), np.zeros((2, 3), np.float32))

    def test_read_only_flag_of_a_dlpack_1_capsule_is_honoured(self):
        """A producer that sets DLPack 1.0's read-only flag gets its memory copied, not viewed."""
        wrapper = getattr(torch.utils.dlpack, "ReadOnlyTensorWrapper", None)
        if wrapper is None or not exchange._TORCH_READS_VERSIONED:
            pytest.skip("this torch has no read-only DLPack export")
        source = torch.arange(4.0)
        t = to_torch(wrapper(source))
        assert t.data_ptr() != source.data_ptr()
        t += 1
        assert torch.equal(source, torch.arange(4.0))


class TestReadOnlyDestinations:
    def test_bytes_buffer_is_refused(self):
        """copy_into refuses an immutable bytes buffer and leaves it as it was."""
        raw = bytes(16)
        destination = np.frombuffer(raw, dtype=np.float32)
        with pytest.raises(ReadOnlyArrayError, match="read-only"):
            copy_into(destination, torch.ones(4))
        assert raw == bytes(16)

    def test_read_only_numpy_is_refused(self):
        """A numpy array marked read-only is never written."""
        destination = np.zeros(3, np.float32)
        destination.flags.writeable = False
        with pytest.raises(ReadOnlyArrayError):
            copy_into(destination, torch.ones(3))
        assert not destination.any()

    def test_read_only_dlpack_destination_is_refused(self):
        """A destination exported with DLPack 1.0's read-only flag is refused."""
        wrapper = getattr(torch.utils.dlpack, "ReadOnlyTensorWrapper", None)
        if wrapper is None or not exchange._TORCH_READS_VERSIONED:
            pytest.skip("this torch has no read-only DLPack export")
        target = torch.zeros(3)
        with pytest.raises(ReadOnlyArrayError):
            copy_into(wrapper(target), torch.ones(3))
        assert not target.any()

    def test_error_is_a_torchbridge_error(self):
        """ReadOnlyArrayError is reachable from the package top level, under TorchBridgeError."""
        assert issubclass(torchbridge.ReadOnlyArrayError, torchbridge.TorchBridgeError)


class TestNegativeStrides:
    @pytest.mark.parametrize(
        "view",
        [lambda a: a[::-1], lambda a: a[:, ::-1], lambda a: a[::-1, ::-2], lambda a: a.T[::-1]],
        ids=["rows", "columns", "both-stepped", "transposed"],
    )
    def test_input_is_copied_once_and_counted(self, view):
        """A reversed numpy view crosses as one counted copy with its values and shape."""
        base = np.arange(12, dtype=np.float32).reshape(3, 4)
        x = view(base)
        before = memory.stats()
        t = to_torch(x)
        after = memory.stats()
        assert tuple(t.shape) == x.shape and np.array_equal(t.numpy(), x)
        assert after.negative_stride_copies == before.negative_stride_copies + 1
        assert after.read_only_copies == before.read_only_copies
        assert not np.shares_memory(t.numpy(), base)
        t += 100  # the copy is the model's: the caller's array is only ever read
        assert np.array_equal(base, np.arange(12, dtype=np.float32).reshape(3, 4))

    def test_julia_order_is_declared_as_for_any_array(self):
        """layout='julia' reverses a reversed view's dims, as it does any array's."""
        x = np.arange(6, dtype=np.float32).reshape(2, 3)[::-1]
        t = to_torch(x, layout="julia")
        assert np.array_equal(t.numpy(), x.T)

    def test_read_only_reversed_view_is_copied_once(self):
        """A read-only reversed view is copied once, not twice."""
        base = np.arange(4, dtype=np.float32)
        base.flags.writeable = False
        before = memory.stats()
        t = to_torch(base[::-1])
        after = memory.stats()
        assert t.tolist() == [3.0, 2.0, 1.0, 0.0]
        assert (after.negative_stride_copies, after.read_only_copies) == (
            before.negative_stride_copies + 1,
            before.read_only_copies,
        )

    def test_raw_julia_array_over_reversed_memory(self):
        """An array interface with negative strides (a raw array over reversed memory) is copied."""
        a = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))[:, ::-1]
        before = memory.stats().negative_stride_copies
        t = to_torch(ArrayValue(a))  # Julia size (2, 3): torch (3, 2)
        assert np.array_equal(t.numpy(), a.T)
        assert memory.stats().negative_stride_copies == before + 1

    def test_a_bridged_model_computes_on_the_values(self):
        """A reversed batch gives the outputs and gradients of the same batch in order."""
        torch.manual_seed(0)
        base = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
        with torchbridge.bridge(torch.nn.Linear(3, 2)) as m:
            baseline = memory.snapshot()
            (y,), pb = m.forward(base[::-1])
            (gx,) = pb(np.ones((4, 2), np.float32))
            (y_ref,), pb_ref = m.forward(np.ascontiguousarray(base[::-1]))
            (gx_ref,) = pb_ref(np.ones((4, 2), np.float32))
            memory.assert_baseline(baseline)
        assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)

    def test_destination_is_refused_before_writing(self):
        """copy_into a reversed view is refused: writing into a copy would look like success."""
        base = np.zeros((2, 3), np.float32)
        with pytest.raises(UnsupportedArrayError, match="negative strides") as info:
            copy_into(base[::-1], torch.ones(2, 3))
        assert "nothing was written" in str(info.value)
        assert not base.any()

    def test_dlpack_producer_with_negative_strides_is_refused_and_released(self):
        """A DLPack export with negative strides is a typed error, and its deleter runs."""
        producer = CountingProducer(
            np.arange(6, dtype=np.float32).reshape(3, 2), reversed_rows=True
        )
        with pytest.raises(UnsupportedArrayError, match=r"negative strides \(-2, 1\)") as info:
            to_torch(producer)
        assert "np.ascontiguousarray" in str(info.value)
        assert producer.exported == producer.deleted == 1

    def test_numpy_dlpack_capsule_with_negative_strides_is_refused(self, monkeypatch):
        """numpy's own capsule of a reversed view is refused with the fix, not as a dtype error;
        its deleter runs once, and numpy's capsule destructor then sees it as used."""
        unraisable = []
        monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
        base = np.arange(4, dtype=np.float32)
        refs = sys.getrefcount(base)
        capsule = base[::-1].__dlpack__()
        with pytest.raises(UnsupportedArrayError, match="negative strides"):
            to_torch(capsule)
        assert exchange._capsule_name(capsule) is None  # consumed: its deleter ran
        del capsule
        gc.collect()
        assert unraisable == []  # the capsule's used name outlived the call that set it
        assert sys.getrefcount(base) == refs  # the export let go of the array


class TestByteOrder:
    @pytest.mark.parametrize("dtype", [">f4", ">f8", ">i8", ">c8"])
    def test_non_native_input_is_refused_with_the_conversion(self, dtype):
        """A big-endian array is refused, naming its byte order and the astype that fixes it."""
        x = np.arange(4).astype(dtype)
        native = np.dtype(dtype).newbyteorder("=").str
        before = memory.stats()
        with pytest.raises(UnsupportedDTypeError, match="big-endian") as info:
            to_torch(x)
        assert f"x.astype('{native}')" in str(info.value)
        assert memory.stats() == before  # nothing copied, nothing counted
        # the named conversion crosses, with the right values
        assert to_torch(x.astype(native)).tolist() == x.tolist()

    def test_non_native_destination_is_refused(self):
        """copy_into a big-endian array is refused and writes nothing."""
        destination = np.zeros(3, ">f4")
        with pytest.raises(UnsupportedDTypeError, match="native byte order"):
            copy_into(destination, torch.ones(3))
        assert not destination.any()

    def test_single_byte_types_have_no_byte_order(self):
        """uint8 and bool arrays ('|' byte order) cross as views."""
        for a in (np.arange(3, dtype=np.uint8), np.ones(3, dtype=bool)):
            assert to_torch(a).data_ptr() == a.ctypes.data


# torch dtypes that DLPack carries and Julia has an element type for
JULIA_DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex32,
    torch.complex64,
    torch.complex128,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.bool,
]


class TestDTypes:
    @pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
    @pytest.mark.parametrize("dtype", JULIA_DTYPES, ids=str)
    def test_every_dtype_crosses_both_ways(self, dtype):
        """Each dtype is viewed in through DLPack (capsule and producer) and copied out, values intact."""
        source = (torch.arange(6) % 2).to(dtype).reshape(2, 3)
        via_capsule = to_torch(torch.utils.dlpack.to_dlpack(source))
        assert via_capsule.dtype == dtype and via_capsule.data_ptr() == source.data_ptr()
        destination = torch.zeros(2, 3, dtype=dtype)
        copy_into(destination, source)
        assert torch.equal(destination.view(torch.uint8), source.view(torch.uint8))  # bit-equal
        size, eltype, device, index = julia_layout(source)
        assert size == (3, 2) and eltype == exchange.julia_eltype(dtype) != str(dtype)

    @pytest.mark.parametrize(
        "dtype", [torch.uint16, torch.uint32, torch.uint64, torch.int8, torch.bool], ids=str
    )
    def test_numpy_producers_of_unsigned_and_small_types(self, dtype):
        """numpy's unsigned integers and bool are viewed without a copy."""
        a = (np.arange(4) % 2).astype(torch.empty(0, dtype=dtype).numpy().dtype)
        t = to_torch(a)
        assert t.dtype == dtype and t.data_ptr() == a.ctypes.data

    def test_dtype_without_a_julia_type_is_named(self):
        """A float8 tensor has no Julia element type: julia_layout says which dtype and what to do."""
        with pytest.raises(UnsupportedDTypeError, match="float8_e4m3fn"):
            julia_layout(torch.zeros(2, dtype=torch.float8_e4m3fn))

    def test_bfloat16_from_numpy_is_named(self):
        """bfloat16 from numpy (ml_dtypes) is refused with its name."""
        ml_dtypes = pytest.importorskip("ml_dtypes")
        with pytest.raises(UnsupportedDTypeError, match="bfloat16"):
            to_torch(np.zeros(3, dtype=ml_dtypes.bfloat16))


class TestCapsuleVersion:
    def test_versioned_capsule_when_torch_reads_it(self):
        """With a torch that reads DLPack 1.0, a producer is asked for a versioned capsule."""
        if not exchange._TORCH_READS_VERSIONED:
            pytest.skip("this torch reads legacy capsules only")
        capsule = exchange._request_capsule(np.zeros(3, np.float32))
        assert exchange._capsule_name(capsule) == b"dltensor_versioned"
        assert to_torch(capsule).shape == (3,)

    def test_legacy_capsule_for_a_torch_that_predates_dlpack_1(self, monkeypatch):
        """A torch older than 2.9 gets the legacy capsule it can read, and imports it."""
        monkeypatch.setattr(exchange, "_TORCH_READS_VERSIONED", False)
        source = torch.arange(3.0)
        capsule = exchange._request_capsule(source)
        assert exchange._capsule_name(capsule) == b"dltensor"
        assert to_torch(capsule).data_ptr() == source.data_ptr()
