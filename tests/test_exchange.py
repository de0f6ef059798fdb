"""Arrays in and out of torch: zero-copy views, the dimension order, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchbridge
from dlpack_producer import CountingProducer
from julia_arrays import ArrayValue
from torchbridge.errors import UnsupportedArrayError, UnsupportedDTypeError
from torchbridge.exchange import copy_into, julia_layout, julia_shape, to_torch


class TestToTorch:
    def test_numpy_is_viewed_not_copied(self):
        """A C-ordered numpy array becomes a tensor over the same memory; writes show both ways."""
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        t = to_torch(a)
        assert t.data_ptr() == a.ctypes.data
        assert t.shape == (3, 4)
        t[0, 0] = 42
        assert a[0, 0] == 42
        a[2, 3] = -1
        assert t[2, 3] == -1

    def test_julia_whcn_batch_enters_as_nchw(self):
        """A raw Julia (W,H,C,N) array from PythonCall is the reversed-dims (N,C,H,W) view, as DLPack.jl shares it."""
        w, h, c, n = 5, 4, 3, 2
        a = np.asfortranarray(np.random.default_rng(0).standard_normal((w, h, c, n)), np.float32)
        t = to_torch(ArrayValue(a))
        assert t.shape == (n, c, h, w)
        assert t.is_contiguous()
        assert t.data_ptr() == a.ctypes.data
        assert t[1, 2, 3, 4] == a[4, 3, 2, 1]
        t[0, 1, 2, 3] = 7.0
        assert a[3, 2, 1, 0] == 7.0

    def test_julia_batch_of_one_is_reversed(self):
        """A Julia (features, 1) matrix is torch (1, features): the type decides, not the strides."""
        a = np.zeros((10, 1), dtype=np.float32, order="F")
        assert to_torch(ArrayValue(a)).shape == (1, 10)
        b = np.zeros((1, 10), dtype=np.float32, order="F")
        assert to_torch(ArrayValue(b)).shape == (10, 1)

    def test_row_major_shape_is_kept(self):
        """DLPack shapes are taken as given: a C-ordered (N,C,H,W) array is not permuted."""
        a = np.zeros((2, 3, 4, 5), dtype=np.float32)
        assert to_torch(a).shape == (2, 3, 4, 5)

    def test_torch_tensor_passes_through(self):
        """A torch tensor is returned as the same object."""
        t = torch.ones(3)
        assert to_torch(t) is t

    def test_capsule_once(self):
        """A capsule is imported without a copy, and a second import is refused clearly."""
        source = torch.arange(4.0)
        capsule = torch.utils.dlpack.to_dlpack(source)
        t = to_torch(capsule)
        assert t.data_ptr() == source.data_ptr()
        with pytest.raises(UnsupportedArrayError, match="already consumed"):
            to_torch(capsule)

    def test_buffer_protocol_object_is_viewed(self):
        """An object offering only the buffer protocol (a raw array via PythonCall) is viewed."""
        a = np.arange(6, dtype=np.float64)
        view = memoryview(a)
        t = to_torch(view)
        assert t.data_ptr() == a.ctypes.data
        assert t.dtype == torch.float64

    def test_producer_deleter_runs_when_tensor_dies(self):
        """An imported producer's deleter runs exactly once, when the last view dies."""
        p = CountingProducer(np.ones((2, 3), np.float32))
        t = to_torch(p)
        assert t.data_ptr() == p.data_ptr
        view = t[1]
        del t
        assert p.deleted == 0
        del view
        assert p.deleted == 1

    def test_refused_dtype_releases_the_capsule(self):
        """A producer whose dtype torch cannot read gets a typed error and its deleter runs at once."""
        p = CountingProducer(np.ones(3, np.float32), dtype_code=4)  # bfloat "of 32 bits"
        with pytest.raises(UnsupportedDTypeError, match="convert it"):
            to_torch(p)
        assert (p.exported, p.deleted) == (1, 1)

    def test_bfloat16_numpy_refused(self):
        """bfloat16 from numpy (ml_dtypes) cannot cross; the error says so."""
        ml_dtypes = pytest.importorskip("ml_dtypes")
        with pytest.raises(UnsupportedDTypeError, match="bfloat16"):
            to_torch(np.zeros(3, dtype=ml_dtypes.bfloat16))

    @pytest.mark.parametrize("bad", [[1.0, 2.0], 3.0, "abc", None])
    def test_non_arrays_refused(self, bad):
        """Lists, scalars, strings and None are not strided arrays."""
        with pytest.raises(UnsupportedArrayError, match="strided array"):
            to_torch(bad)

    def test_sparse_refused(self):
        """A sparse tensor is not a strided array."""
        sparse = torch.eye(3).to_sparse()
        with pytest.raises(UnsupportedArrayError, match="to_dense"):
            to_torch(sparse)

    def test_object_dtype_refused(self):
        """A numpy array of Python objects has no DLPack type."""
        with pytest.raises(UnsupportedDTypeError):
            to_torch(np.array([object(), object()]))


class TestResultsOut:
    def test_julia_layout(self):
        """julia_layout names the Julia size, eltype and device a receiver must allocate."""
        t = torch.zeros(8, 3, 32, 16)
        assert julia_layout(t) == ((16, 32, 3, 8), "Float32", "cpu", -1)
        assert julia_shape((1, 2, 3)) == (3, 2, 1)

    def test_copy_into_a_julia_owned_array(self):
        """copy_into fills a caller-owned Julia array with the tensor's values."""
        source = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        destination = np.zeros((3, 2), dtype=np.float32, order="F")  # Julia size (3, 2)
        copy_into(ArrayValue(destination), source)
        assert np.array_equal(destination.T, source.numpy())

    def test_copy_into_a_numpy_array_keeps_its_shape(self):
        """A Fortran-ordered numpy destination of the source's own shape receives it as is."""
        source = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        destination = np.zeros((2, 3), dtype=np.float32, order="F")
        copy_into(destination, source)
        assert np.array_equal(destination, source.numpy())

    def test_copy_into_checks_shape_and_dtype(self):
        """A destination of the wrong size or eltype is refused with the expected size."""
        source = torch.zeros(2, 3)
        with pytest.raises(UnsupportedArrayError, match=r"Julia size \(3, 2\)"):
            copy_into(np.zeros((2, 2), np.float32), source)
        with pytest.raises(UnsupportedDTypeError, match="Float32"):
            copy_into(np.zeros((2, 3), np.float64), source)


class TestDeclaredLayout:
    """NOTE [dimension order]: layout is declared or known from the type, never read from strides."""

    @pytest.mark.parametrize(
        "make",
        [
            np.asfortranarray,
            lambda x: x.T.copy(order="F").T,  # Fortran memory, numpy shape (32, 5)
            lambda x: x.T.copy().T,  # a transposed view
            lambda x: x[:, ::-1][:, ::-1],  # negative strides, then back
        ],
    )
    def test_numpy_keeps_its_own_shape_whatever_its_strides(self, make):
        """A (32, 5) batch from pandas or sklearn is torch (32, 5), with the same values, however it is laid out."""
        x = np.random.default_rng(0).standard_normal((32, 5)).astype(np.float32)
        a = make(x)
        t = to_torch(a)
        assert t.shape == (32, 5)
        assert np.array_equal(t.numpy(), x)

    def test_square_fortran_batch_is_not_transposed(self):
        """forward gives the same numbers for the same numpy values, C- or Fortran-ordered."""
        lin = torch.nn.Linear(4, 3)
        x = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
        with torchbridge.bridge(lin) as m:
            (c,), _ = m.forward(x, grad=False)
            (f,), _ = m.forward(np.asfortranarray(x), grad=False)
        torch.testing.assert_close(c, f, rtol=1e-6, atol=1e-6)  # a transposed batch differs by O(1)

    def test_fortran_array_with_size_one_axis_keeps_its_shape(self):
        """A Fortran (10, 1) numpy array is torch (10, 1)."""
        a = np.zeros((10, 1), dtype=np.float32, order="F")
        assert to_torch(a).shape == (10, 1)

    def test_declared_julia_layout_reverses_any_array(self):
        """layout="julia" declares Julia order: a Fortran (W,H,C,N) numpy array is the (N,C,H,W) view."""
        a = np.asfortranarray(np.arange(120, dtype=np.float32).reshape(5, 4, 3, 2))
        t = to_torch(a, layout="julia")
        assert t.shape == (2, 3, 4, 5)
        assert t.is_contiguous() and t.data_ptr() == a.ctypes.data
        assert t[1, 2, 3, 4] == a[4, 3, 2, 1]

    def test_declared_julia_layout_with_zero_stride_axis(self):
        """A declared Julia array with a size-1 axis of stride 0 is reversed like any other."""
        x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
        a = np.asfortranarray(x[:, None].transpose(3, 2, 1, 0))  # size (4, 3, 1, 2)
        t = to_torch(a, layout="julia")
        assert t.shape == (2, 1, 3, 4)
        assert t[1, 0, 2, 3] == a[3, 2, 0, 1]
        assert t.data_ptr() == a.ctypes.data

    def test_declared_torch_layout_keeps_a_julia_array_as_given(self):
        """layout="torch" overrides the type: a raw Julia array keeps the size Julia reports."""
        a = np.zeros((5, 3), dtype=np.float32, order="F")
        assert to_torch(ArrayValue(a), layout="torch").shape == (5, 3)

    def test_dlpack_share_is_taken_as_given(self):
        """What DLPack.jl shares is already torch order: a C-contiguous reversed view, kept."""
        a = np.asfortranarray(np.zeros((5, 4, 3, 2), np.float32))
        shared = torch.from_dlpack(a.T)  # DLPack.share(x, torch.from_dlpack)
        assert to_torch(shared).shape == (2, 3, 4, 5)

    def test_unknown_layout_is_refused(self):
        """A layout other than None, "julia" or "torch" is a typed error."""
        with pytest.raises(UnsupportedArrayError, match="layout"):
            to_torch(np.zeros(3), layout="fortran")

    def test_c_array_with_size_one_axis_is_kept(self):
        """A C-ordered (N, 1, F) array is taken as given."""
        a = np.zeros((5, 1, 3), np.float32)
        assert to_torch(a).shape == (5, 1, 3)
