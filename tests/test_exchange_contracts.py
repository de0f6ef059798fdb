"""Read-only memory, every DLPack dtype, capsule versions: the exchange's explicit contracts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchbridge
from torchbridge import exchange, memory
from torchbridge.errors import ReadOnlyArrayError, UnsupportedDTypeError
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
