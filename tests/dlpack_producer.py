"""A DLPack producer written with ctypes whose deleter counts its calls.

It owns a block of memory (a numpy array kept alive by the producer) and hands
out legacy ``"dltensor"`` capsules. Every capsule's ``DLManagedTensor`` has a
deleter that increments :attr:`CountingProducer.deleted`; the consumer (torch)
calls it exactly once, when the last tensor over that memory dies.
"""

from __future__ import annotations

import ctypes

import numpy as np


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    pass


_Deleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
DLManagedTensor._fields_ = [
    ("dl_tensor", DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", _Deleter),
]

_PyCapsule_New = ctypes.pythonapi.PyCapsule_New
_PyCapsule_New.restype = ctypes.py_object
_PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]

_DTYPE_CODES = {"f": 2, "i": 0, "u": 1, "c": 5, "b": 6}
_kDLCPU = 1

# Every exported struct, its shape and strides arrays and its producer stay
# alive here until the consumer calls the deleter, however long that takes:
# a consumer that outlives the producer object must not call into freed memory.
_LIVE_EXPORTS: dict[int, tuple] = {}


def _delete_export(managed_ptr) -> None:
    entry = _LIVE_EXPORTS.pop(ctypes.addressof(managed_ptr.contents), None)
    if entry is not None:
        entry[0].deleted += 1


_DELETER = _Deleter(_delete_export)


class CountingProducer:
    """A float array exported through DLPack whose deleter counts its calls.

    Args:
        array: the data; the producer keeps it alive until every capsule's
            deleter has run.
        dtype_code: override the DLPack type code (to produce a type the
            consumer cannot read).
        reversed_rows: export the array with its first axis reversed, as a
            negative stride from the last row (what a reversed view exports).
    """

    def __init__(
        self, array: np.ndarray, *, dtype_code: int | None = None, reversed_rows: bool = False
    ):
        self.array = np.ascontiguousarray(array)
        self.exported = 0
        self.deleted = 0
        self._dtype_code = dtype_code
        self._reversed_rows = reversed_rows

    @property
    def data_ptr(self) -> int:
        return self.array.ctypes.data

    def __dlpack_device__(self):
        return (_kDLCPU, 0)

    def __dlpack__(self, stream=None, **_ignored):
        a = self.array[::-1] if self._reversed_rows else self.array
        shape = (ctypes.c_int64 * a.ndim)(*a.shape)
        strides = (ctypes.c_int64 * a.ndim)(*(s // a.itemsize for s in a.strides))
        managed = DLManagedTensor()
        managed.dl_tensor.data = a.ctypes.data
        managed.dl_tensor.device = DLDevice(_kDLCPU, 0)
        managed.dl_tensor.ndim = a.ndim
        code = _DTYPE_CODES[a.dtype.kind] if self._dtype_code is None else self._dtype_code
        managed.dl_tensor.dtype = DLDataType(code, a.itemsize * 8, 1)
        managed.dl_tensor.shape = shape
        managed.dl_tensor.strides = strides
        managed.dl_tensor.byte_offset = 0
        managed.deleter = _DELETER
        _LIVE_EXPORTS[ctypes.addressof(managed)] = (self, managed, shape, strides)
        self.exported += 1
        return _PyCapsule_New(ctypes.addressof(managed), b"dltensor", None)
