"""Arrays in: any DLPack producer becomes a torch tensor over the same memory.

NOTE [dimension order]
A Julia array is column-major. DLPack.jl shares a Julia array of size
``(W, H, C, N)`` as a row-major tensor of shape ``(N, C, H, W)`` over the same
memory, so Flux's WHCN is torch's NCHW and Flux's ``(features, batch)`` is
torch's ``(batch, features)`` without a copy. torchbridge never permutes what it
receives through DLPack. The one place a dimension order is chosen here is a
*column-major strided array* (a Fortran-ordered numpy array, or a raw Julia
array that PythonCall passes through the buffer protocol): it is viewed with its
dimensions reversed, which is exactly the tensor DLPack.jl would have shared.
Both routes from Julia therefore give the same torch tensor.

Nothing here copies. An object that cannot be viewed is refused with a typed
error instead of being copied behind the caller's back.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import torch

from .errors import UnsupportedArrayError, UnsupportedDTypeError

__all__ = ["copy_into", "describe_array", "julia_eltype", "julia_layout", "julia_shape", "to_torch"]

# Julia's names for torch dtypes, for messages aimed at Julia users.
_JULIA_ELTYPE = {
    torch.float16: "Float16",
    torch.bfloat16: "BFloat16",
    torch.float32: "Float32",
    torch.float64: "Float64",
    torch.complex64: "ComplexF32",
    torch.complex128: "ComplexF64",
    torch.int8: "Int8",
    torch.int16: "Int16",
    torch.int32: "Int32",
    torch.int64: "Int64",
    torch.uint8: "UInt8",
    torch.bool: "Bool",
}


def julia_eltype(dtype: torch.dtype) -> str:
    """julia_eltype(torch.float32) -> "Float32"."""
    return _JULIA_ELTYPE.get(dtype, str(dtype))


def julia_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    """julia_shape((N, C, H, W)) -> (W, H, C, N): the same array seen from Julia."""
    return tuple(reversed(tuple(shape)))


def describe_array(t: torch.Tensor) -> str:
    """A one-line description naming the shape in both orders, for error messages."""
    return (
        f"{t.dtype} tensor of torch shape {tuple(t.shape)} "
        f"(Julia size {julia_shape(t.shape)}, {julia_eltype(t.dtype)}) on {t.device}"
    )


def _is_column_major(a: np.ndarray) -> bool:
    """True when ``a`` is laid out as a compact Julia array rather than a C array.

    numpy's contiguity flags ignore size-1 dimensions, so a Julia ``(10, 1)``
    matrix (strides ``(4, 40)``) is "C-contiguous" to numpy; its exact strides
    still say column-major, and decide the batch-of-one case. Where the strides
    of size-1 dimensions say nothing (numpy gives ``None``-inserted axes a
    stride of 0), only the other dimensions are compared.
    """
    if a.ndim < 2:
        return False
    col_major, row_major = [], []
    step = a.itemsize
    for n in a.shape:
        col_major.append(step)
        step *= n
    step = a.itemsize
    for n in reversed(a.shape):
        row_major.append(step)
        step *= n
    row_major.reverse()
    strides = list(a.strides)
    if strides == row_major:
        return False
    if strides == col_major:
        return True
    significant = [i for i, n in enumerate(a.shape) if n != 1]
    loose_col = all(strides[i] == col_major[i] for i in significant)
    loose_row = all(strides[i] == row_major[i] for i in significant)
    return loose_col and not loose_row


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    if a.dtype.kind not in "biufc":
        raise UnsupportedDTypeError(
            f"to_torch: arrays of {a.dtype} cannot cross the bridge; "
            "pass a numeric array (Float32 is what most models expect)."
        )
    try:
        # from_numpy is the cheapest zero-copy view; it refuses read-only arrays
        # (with a warning) and a few dtypes, which DLPack takes instead.
        tensor = torch.from_numpy(a) if a.flags.writeable else torch.from_dlpack(a)
    except (BufferError, TypeError, RuntimeError) as exc:
        raise UnsupportedDTypeError(
            f"to_torch: a numpy array of dtype {a.dtype} cannot be exported through DLPack "
            f"({exc}). Convert it first, e.g. to float32 (Float32 in Julia)."
        ) from exc
    if a.flags.f_contiguous and a.ndim >= 2 and _is_column_major(a):
        tensor = tensor.permute(*reversed(range(a.ndim)))
    return tensor


def to_torch(obj: Any) -> torch.Tensor:
    """to_torch(obj) -> Tensor

    View ``obj`` as a torch tensor over the same memory; never copies.

    Accepts torch tensors (returned as they are), DLPack producers (objects with
    ``__dlpack__`` and ``__dlpack_device__``: numpy, CuPy, JAX, DLPack.jl's
    shared arrays), unconsumed DLPack capsules, and objects exposing the buffer
    protocol or ``__array_interface__`` (a raw Julia array passed by
    PythonCall). A column-major strided array is viewed with its dimensions
    reversed (see NOTE [dimension order] in this module).

    .. warning::
        The tensor shares memory with ``obj``: writes on either side are seen
        on the other, and a capsule can be consumed only once.

    Raises:
        UnsupportedDTypeError: the element type cannot cross through DLPack
            (for example bfloat16 from numpy/ml_dtypes).
        UnsupportedArrayError: ``obj`` is not a strided array (a list, a
            scalar, a sparse tensor, a used capsule ...).
    """
    if isinstance(obj, torch.Tensor):
        if obj.layout is not torch.strided:
            raise UnsupportedArrayError(
                f"to_torch: got a {obj.layout} tensor; only dense strided tensors cross the "
                "bridge. Call .to_dense() first."
            )
        return obj
    if isinstance(obj, np.ndarray):
        return _from_numpy(obj)
    if hasattr(obj, "__dlpack__"):
        try:
            capsule = _request_capsule(obj)
        except BufferError as exc:
            raise UnsupportedDTypeError(
                f"to_torch: {type(obj).__name__} refused to export through DLPack ({exc}). "
                "Its element type or layout cannot cross; convert it to a supported dtype "
                "(float16/32/64, integer, bool, complex) first."
            ) from exc
        return _import_capsule(capsule, type(obj).__name__)
    if type(obj).__name__ == "PyCapsule":
        if not _capsule_name(obj):
            raise UnsupportedArrayError(
                "to_torch: this DLPack capsule was already consumed. A capsule is consumed by "
                "its first import: share the array again for each use."
            )
        return _import_capsule(obj, "DLPack capsule")
    if hasattr(obj, "__array_interface__") or _has_buffer(obj):
        try:
            view = np.asarray(obj)
        except (TypeError, ValueError) as exc:
            raise UnsupportedArrayError(
                f"to_torch: {type(obj).__name__} exposes an array interface numpy cannot "
                f"view ({exc})."
            ) from exc
        if view.dtype != object:
            return _from_numpy(view)
    raise UnsupportedArrayError(
        f"to_torch: cannot view a {type(obj).__name__} as an array without copying. Pass a "
        "strided array: a torch tensor, a numpy array, any object with __dlpack__, or a Julia "
        "array (DLPack.share from Julia, or the array itself through PythonCall)."
    )


# -- DLPack capsules -----------------------------------------------------------
# torch.from_dlpack negotiates with the producer and imports in one call; when
# the import fails, the capsule it requested is dropped unconsumed, and a
# producer whose capsule has no destructor (DLPack.jl's, for one) then never
# gets its deleter called. Requesting the capsule here lets a failed import run
# the deleter at once, so a refused array leaves nothing allocated.

_kDLCUDA, _kDLROCM = 2, 10
_CAPSULE_NAMES = (b"dltensor", b"dltensor_versioned")
# offset of `deleter` in DLManagedTensor (after DLTensor: 48 bytes, manager_ctx)
# and in DLManagedTensorVersioned (after version: 8 bytes, manager_ctx)
_DELETER_OFFSET = {b"dltensor": 56, b"dltensor_versioned": 16}

_pythonapi = ctypes.pythonapi
_pythonapi.PyCapsule_IsValid.restype = ctypes.c_int
_pythonapi.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
_pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _capsule_name(capsule: Any) -> bytes | None:
    for name in _CAPSULE_NAMES:
        if _pythonapi.PyCapsule_IsValid(capsule, name):
            return name
    return None


def _request_capsule(obj: Any) -> Any:
    """Ask a producer for a capsule the way ``torch.from_dlpack`` does, stream included."""
    kwargs: dict[str, Any] = {}
    device_type, device_index = obj.__dlpack_device__()
    if device_type in (_kDLCUDA, _kDLROCM):
        # The producer must order its pending work before torch's current stream reads.
        stream = torch.cuda.current_stream(f"cuda:{device_index}").cuda_stream
        kwargs["stream"] = 1 if device_type == _kDLCUDA and stream == 0 else stream
    try:
        return obj.__dlpack__(max_version=(1, 0), **kwargs)
    except TypeError:  # a producer that predates DLPack 1.0
        return obj.__dlpack__(**kwargs)


def _import_capsule(capsule: Any, what: str) -> torch.Tensor:
    try:
        return torch.from_dlpack(capsule)
    except (BufferError, RuntimeError, ValueError, TypeError) as exc:
        _delete_unconsumed(capsule)
        raise UnsupportedDTypeError(
            f"to_torch: torch cannot import this {what} ({exc}). Its element type or "
            "device is not one torch reads through DLPack; convert it to a supported dtype "
            "(float16/32/64, bfloat16, integer, bool, complex) first."
        ) from exc


def _delete_unconsumed(capsule: Any) -> None:
    """Run the producer's deleter of a capsule nobody consumed, and mark it used."""
    name = _capsule_name(capsule)
    if name is None:
        return
    pointer = _pythonapi.PyCapsule_GetPointer(capsule, name)
    deleter = ctypes.c_void_p.from_address(pointer + _DELETER_OFFSET[name]).value
    ctypes.pythonapi.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
    ctypes.pythonapi.PyCapsule_SetName(capsule, b"used_" + name)
    if deleter:
        _Deleter(deleter)(pointer)


def _has_buffer(obj: Any) -> bool:
    try:
        memoryview(obj).release()
    except TypeError:
        return False
    return True


def julia_layout(t: torch.Tensor) -> tuple[tuple[int, ...], str, str, int]:
    """julia_layout(t) -> (julia_size, julia_eltype, device_type, device_index)

    What a Julia caller needs to allocate an array that will receive ``t``:
    its size in Julia order, its element type's Julia name, and its device
    (``"cpu"`` with index -1, or ``"cuda"`` with the device index).
    """
    device = t.device
    index = -1 if device.index is None else device.index
    return julia_shape(t.shape), julia_eltype(t.dtype), device.type, index


def copy_into(destination: Any, source: torch.Tensor) -> None:
    """copy_into(destination, source) -> None

    Copy ``source`` into the memory of ``destination`` (any array
    :func:`to_torch` accepts, typically a Julia array shared with
    ``DLPack.share``). This is how results cross to an owner on the other
    side: the receiving language allocates, owns and frees the memory, and
    torch's tensor can be dropped at once (see NOTE [ownership] in
    :mod:`torchbridge.memory`).
    """
    target = to_torch(destination)
    if target.shape != source.shape:
        raise UnsupportedArrayError(
            f"copy_into: destination has torch shape {tuple(target.shape)} (Julia size "
            f"{julia_shape(target.shape)}) but the source is {describe_array(source)}; "
            "allocate the destination with the source's Julia size."
        )
    if target.dtype != source.dtype:
        raise UnsupportedDTypeError(
            f"copy_into: destination is {julia_eltype(target.dtype)} but the source is "
            f"{julia_eltype(source.dtype)}; allocate the destination with the source's eltype."
        )
    with torch.no_grad():
        target.copy_(source)
