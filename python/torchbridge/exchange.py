"""Arrays in: any DLPack producer becomes a torch tensor over the same memory.

NOTE [dimension order]
A Julia array is column-major. DLPack.jl shares a Julia array of size
``(W, H, C, N)`` as a row-major tensor of shape ``(N, C, H, W)`` over the same
memory, so Flux's WHCN is torch's NCHW and Flux's ``(features, batch)`` is
torch's ``(batch, features)`` without a copy.

Which arrays are Julia's is *declared*, never guessed from strides:

* ``layout=None`` (the default everywhere): an array keeps its own shape —
  numpy (whatever its strides: a Fortran-ordered ``(32, 5)`` batch is torch
  ``(32, 5)``), torch tensors, DLPack producers and capsules (DLPack.jl's
  shares among them: they already carry the reversed dims). The one exception
  is known from the type: a raw Julia array that PythonCall passes to Python
  (``juliacall.ArrayValue``) reports Julia's size, and is viewed reversed.
* ``layout="julia"``: the caller declares that the array's shape is listed in
  Julia order; it is viewed with its dimensions reversed.
* ``layout="torch"``: the shape is taken as given, whatever the type.

Every entry point (``bridge``'s forward and pullback, ``TrainStep``, ``fit``,
``copy_into``, the Julia-support calls) reaches arrays through
:func:`to_torch` with this rule.

NOTE [read-only memory]
A producer may mark its memory read-only (numpy's ``writeable`` flag, the
buffer protocol's ``readonly``, DLPack 1.0's ``DLPACK_FLAG_BITMASK_READ_ONLY``).
torch has no read-only tensors, so such memory is never handed to torch as a
view: as an input it is copied once (counted in the ledger as
``read_only_copies``), as a destination it is refused with
:class:`~torchbridge.errors.ReadOnlyArrayError`. A model that works in place on
its input can then never write into, or crash on, a read-only mapping.

NOTE [negative strides]
numpy views such as ``a[::-1]`` (and a Julia array viewed through a reversed
range) step backwards through memory; torch has no negative strides, so it
cannot view them. As an *input* such an array is copied once (counted in the
ledger as ``negative_stride_copies``): the model reads the same values, and an
input's memory is only ever read. As a *destination* it is refused with
:class:`~torchbridge.errors.UnsupportedArrayError` before anything is written:
a copy written into would look like success while the caller's array stayed as
it was. A DLPack producer other than numpy that exports negative strides is
refused too (the bridge reads foreign memory only through torch, which cannot
import it); pass a copy.

NOTE [byte order]
torch reads native byte order only. A numpy array of another byte order
(``np.dtype('>f4')`` on a little-endian machine: FITS files, some network
formats) is refused with :class:`~torchbridge.errors.UnsupportedDTypeError`
naming the byte order and the conversion (``x.astype('<f4')``). Converting it
here would be a copy that changes the element representation: like any other
dtype conversion it is the caller's to make, once, where it is visible.

Apart from those copies nothing here copies. An object that cannot be viewed is
refused with a typed error instead of being copied behind the caller's back.
"""

from __future__ import annotations

import ctypes
import inspect
import warnings
from typing import Any, Literal

import numpy as np
import torch
import torch.utils.dlpack

from .errors import ReadOnlyArrayError, UnsupportedArrayError, UnsupportedDTypeError

__all__ = [
    "Layout",
    "copy_into",
    "describe_array",
    "is_julia_array",
    "julia_eltype",
    "julia_layout",
    "julia_shape",
    "to_torch",
]

Layout = Literal["julia", "torch"] | None
_LAYOUTS = (None, "julia", "torch")

# Julia's names for torch dtypes: the element types a Julia array can receive.
_JULIA_ELTYPE = {
    torch.float16: "Float16",
    torch.bfloat16: "BFloat16",
    torch.float32: "Float32",
    torch.float64: "Float64",
    torch.complex32: "ComplexF16",
    torch.complex64: "ComplexF32",
    torch.complex128: "ComplexF64",
    torch.int8: "Int8",
    torch.int16: "Int16",
    torch.int32: "Int32",
    torch.int64: "Int64",
    torch.uint8: "UInt8",
    torch.uint16: "UInt16",
    torch.uint32: "UInt32",
    torch.uint64: "UInt64",
    torch.bool: "Bool",
}


def julia_eltype(dtype: torch.dtype) -> str:
    """julia_eltype(torch.float32) -> "Float32" (a dtype without a Julia type: torch's name)."""
    return _JULIA_ELTYPE.get(dtype, str(dtype))


def julia_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    """julia_shape((N, C, H, W)) -> (W, H, C, N): the same array seen from Julia."""
    return tuple(shape)[::-1]


def describe_array(t: torch.Tensor) -> str:
    """A one-line description naming the shape in both orders, for error messages."""
    return (
        f"{t.dtype} tensor of torch shape {tuple(t.shape)} "
        f"(Julia size {julia_shape(t.shape)}, {julia_eltype(t.dtype)}) on {t.device}"
    )


def is_julia_array(obj: Any) -> bool:
    """True for a raw Julia array that PythonCall passed to Python (``juliacall.ArrayValue``).

    Known from the type alone, without importing juliacall (which would start Julia).
    """
    cls = type(obj)
    if cls in _JULIA_ARRAY_TYPES:
        return True
    if cls.__module__ != "juliacall":  # every juliacall type lives in that module
        return False
    found = any(c.__name__ == "ArrayValue" and c.__module__ == "juliacall" for c in cls.__mro__)
    if found:
        _JULIA_ARRAY_TYPES.add(cls)
    return found


_JULIA_ARRAY_TYPES: set[type] = set()


def to_torch(obj: Any, *, layout: Layout = None) -> torch.Tensor:
    """to_torch(obj, *, layout=None) -> Tensor

    View ``obj`` as a torch tensor over the same memory.

    Accepts torch tensors (returned as they are), DLPack producers (objects with
    ``__dlpack__`` and ``__dlpack_device__``: numpy, CuPy, JAX, DLPack.jl's
    shared arrays), unconsumed DLPack capsules, and objects exposing the buffer
    protocol or ``__array_interface__`` (a raw Julia array passed by PythonCall).

    ``layout`` declares the dimension order (NOTE [dimension order] in this
    module): ``None`` keeps every array's own shape except a raw Julia array's,
    which is known by its type and reversed; ``"julia"`` reverses the dims of
    any array; ``"torch"`` keeps them as given.

    Memory its producer marked read-only is copied once, never viewed (NOTE
    [read-only memory]); so is a numpy view with negative strides (NOTE
    [negative strides]).

    .. warning::
        The tensor shares memory with ``obj``: writes on either side are seen
        on the other, and a capsule can be consumed only once.

    Raises:
        UnsupportedDTypeError: the element type cannot cross through DLPack
            (for example bfloat16 from numpy/ml_dtypes, or a numpy array in
            non-native byte order: NOTE [byte order]).
        UnsupportedArrayError: ``obj`` is not a strided array (a list, a
            scalar, a sparse tensor, a used capsule, a DLPack export with
            negative strides ...), or ``layout`` is not one of ``None``,
            ``"julia"``, ``"torch"``.
    """
    reverse = _reverses(obj, layout)
    view = _julia_view(obj) if reverse else None
    if view is not None:
        # numpy's transpose reverses the view before torch sees it: cheaper
        # than permuting the tensor after (this runs for every Julia input)
        tensor, access = _from_numpy(view.T)
    else:
        tensor, access = _view(obj)
        if reverse:
            tensor = _reversed(tensor)
    if access is not _VIEWED:
        from .memory import LEDGER

        if access is _READ_ONLY:
            tensor = tensor.clone(memory_format=torch.contiguous_format)
            LEDGER.count_read_only_copy()
        else:  # _COPIED: the copy is made already
            LEDGER.count_negative_stride_copy()
    return tensor


# How a tensor from _view relates to its producer's memory: a view torch may
# write through; a view of memory marked read-only (to copy, or refuse as a
# destination); or a private copy, made because torch cannot view that memory.
_VIEWED, _READ_ONLY, _COPIED = "viewed", "read-only", "copied"


def _julia_view(obj: Any) -> np.ndarray | None:
    # A raw Julia array viewed through the buffer protocol, at once: the
    # generic path (_view) asks for its __array_interface__ twice, and
    # juliacall computes that in Julia on every access. Only a real buffer
    # counts (np.asarray alone would fall back to __array__, a silent copy of
    # a lazy array); None for anything else, left to _view and its errors.
    if not is_julia_array(obj):
        return None
    try:
        buffer = memoryview(obj)
    except (TypeError, BufferError):
        return None
    return np.asarray(buffer)


def _reverses(obj: Any, layout: Layout) -> bool:
    if layout not in _LAYOUTS:
        raise UnsupportedArrayError(
            f"to_torch: layout must be None, 'julia' or 'torch', got {layout!r}. 'julia' "
            "declares that the array's shape is listed in Julia order (reversed for torch)."
        )
    if layout is None:
        return is_julia_array(obj)
    return layout == "julia"


def _reversed(t: torch.Tensor) -> torch.Tensor:
    return t.permute(*reversed(range(t.dim()))) if t.dim() >= 2 else t


def _view(obj: Any, *, destination: bool = False) -> tuple[torch.Tensor, str]:
    """A tensor over ``obj``'s memory and how it relates to it (``_VIEWED``, ``_READ_ONLY``,
    ``_COPIED``); a ``destination`` is never copied (NOTE [negative strides])."""
    if isinstance(obj, torch.Tensor) and not isinstance(obj, _READ_ONLY_WRAPPERS):
        if obj.layout is not torch.strided:
            raise UnsupportedArrayError(
                f"to_torch: got a {obj.layout} tensor; only dense strided tensors cross the "
                "bridge. Call .to_dense() first."
            )
        return obj, _VIEWED
    if isinstance(obj, np.ndarray):
        return _from_numpy(obj, destination=destination)
    if hasattr(obj, "__dlpack__"):
        try:
            capsule = _request_capsule(obj)
        except BufferError as exc:
            raise UnsupportedDTypeError(
                f"to_torch: {type(obj).__name__} refused to export through DLPack ({exc}). "
                "Its element type or layout cannot cross; convert it to a supported dtype "
                "(float16/32/64, integer, bool, complex) first."
            ) from exc
        access = _READ_ONLY if _capsule_read_only(capsule) else _VIEWED
        return _import_capsule(capsule, type(obj).__name__), access
    if type(obj).__name__ == "PyCapsule":
        if not _capsule_name(obj):
            raise UnsupportedArrayError(
                "to_torch: this DLPack capsule was already consumed. A capsule is consumed by "
                "its first import: share the array again for each use."
            )
        access = _READ_ONLY if _capsule_read_only(obj) else _VIEWED
        return _import_capsule(obj, "DLPack capsule"), access
    if hasattr(obj, "__array_interface__") or _has_buffer(obj):
        try:
            view = np.asarray(obj)
        except (TypeError, ValueError) as exc:
            raise UnsupportedArrayError(
                f"to_torch: {type(obj).__name__} exposes an array interface numpy cannot "
                f"view ({exc})."
            ) from exc
        if view.dtype != object:
            return _from_numpy(view, destination=destination)
    raise UnsupportedArrayError(
        f"to_torch: cannot view a {type(obj).__name__} as an array without copying. Pass a "
        "strided array: a torch tensor, a numpy array, any object with __dlpack__, or a Julia "
        "array (DLPack.share from Julia, or the array itself through PythonCall)."
    )


def _from_numpy(a: np.ndarray, *, destination: bool = False) -> tuple[torch.Tensor, str]:
    # The common case costs one flag read and torch's own view: whatever torch
    # refuses (another dtype, byte order, negative strides) is sorted out after.
    if not a.flags.writeable:
        # A view torch believes writable; the caller copies or refuses it at once
        # (NOTE [read-only memory]), so torch's warning about it says nothing here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                return torch.from_numpy(a), _READ_ONLY
            except (TypeError, ValueError, RuntimeError) as exc:
                return _refused_numpy(a, destination, exc)
    try:
        return torch.from_numpy(a), _VIEWED
    except (TypeError, ValueError, RuntimeError) as exc:
        return _refused_numpy(a, destination, exc)


def _refused_numpy(
    a: np.ndarray, destination: bool, exc: BaseException
) -> tuple[torch.Tensor, str]:
    """What a numpy array torch refused to view becomes: a copy (negative strides, as an
    input: NOTE [negative strides]) or a typed error saying why and what to do."""
    if a.dtype.kind not in "biufc":
        raise UnsupportedDTypeError(
            f"to_torch: arrays of numpy dtype {a.dtype} cannot cross the bridge; "
            "pass a numeric array (Float32 is what most models expect)."
        ) from exc
    if not a.dtype.isnative:
        native = a.dtype.newbyteorder("=")
        order = "big" if a.dtype.byteorder == ">" else "little"
        fix = (
            f"allocate the destination in native byte order (np.empty(shape, '{native.str}'))"
            if destination
            else f"convert it once: x.astype('{native.str}')"
        )
        raise UnsupportedDTypeError(
            f"to_torch: the numpy array has dtype '{a.dtype.str}' ({order}-endian), and torch "
            f"reads native byte order only ('{native.str}' here); {fix}."
        ) from exc
    if a.strides and min(a.strides) < 0:
        if destination:
            raise UnsupportedArrayError(
                f"copy_into: the destination (numpy shape {a.shape}, strides {a.strides}) has "
                "negative strides, which torch cannot view, so nothing was written: writing "
                "into a copy would leave your array as it was. Pass an array with positive "
                "strides (e.g. write into the array it is a reversed view of, and reverse after)."
            ) from exc
        # NOTE [negative strides]: one copy, counted by the caller; an input is only read
        return torch.from_numpy(np.ascontiguousarray(a)), _COPIED
    raise UnsupportedDTypeError(
        f"to_torch: a numpy array of dtype {a.dtype} cannot cross the bridge ({exc}). "
        "Convert it first, e.g. to float32 (Float32 in Julia)."
    ) from exc


# -- DLPack capsules -----------------------------------------------------------
# torch.from_dlpack negotiates with the producer and imports in one call; when
# the import fails, the capsule it requested is dropped unconsumed, and a
# producer whose capsule has no destructor (DLPack.jl's, for one) then never
# gets its deleter called. Requesting the capsule here lets a failed import run
# the deleter at once, so a refused array leaves nothing allocated, and lets
# the read-only flag of a DLPack 1.0 capsule be read before torch ignores it.

_kDLCUDA, _kDLROCM = 2, 10
_CAPSULE_NAMES = (b"dltensor", b"dltensor_versioned")
# A capsule keeps the pointer to its name, not a copy: the names it is renamed to
# live here for good (a temporary bytes object would leave it a dangling name,
# and its producer's destructor would then fail to recognise it as used).
_USED_NAMES = {name: b"used_" + name for name in _CAPSULE_NAMES}
# offset of `deleter` in DLManagedTensor (after DLTensor: 48 bytes, manager_ctx)
# and in DLManagedTensorVersioned (after version: 8 bytes, manager_ctx)
_DELETER_OFFSET = {b"dltensor": 56, b"dltensor_versioned": 16}
# DLManagedTensorVersioned.flags follows the deleter; bit 0 is READ_ONLY.
_FLAGS_OFFSET, _FLAG_READ_ONLY = 24, 1
# torch reads versioned (DLPack 1.0) capsules from 2.9 on; older torch gets the
# legacy capsule it understands. Decided once, from the signature torch has.
_TORCH_READS_VERSIONED = "max_version" in inspect.signature(torch.Tensor.__dlpack__).parameters
_READ_ONLY_WRAPPERS = tuple(
    t for t in (getattr(torch.utils.dlpack, "ReadOnlyTensorWrapper", None),) if t is not None
)

_pythonapi = ctypes.pythonapi
_pythonapi.PyCapsule_IsValid.restype = ctypes.c_int
_pythonapi.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
_pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_pythonapi.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _capsule_name(capsule: Any) -> bytes | None:
    for name in _CAPSULE_NAMES:
        if _pythonapi.PyCapsule_IsValid(capsule, name):
            return name
    return None


def _capsule_read_only(capsule: Any) -> bool:
    """True for an unconsumed DLPack 1.0 capsule whose producer set the read-only flag."""
    if _capsule_name(capsule) != b"dltensor_versioned":
        return False
    pointer = _pythonapi.PyCapsule_GetPointer(capsule, b"dltensor_versioned")
    flags = ctypes.c_uint64.from_address(pointer + _FLAGS_OFFSET).value
    return bool(flags & _FLAG_READ_ONLY)


def _request_capsule(obj: Any) -> Any:
    """Ask a producer for a capsule the way ``torch.from_dlpack`` does, stream included."""
    kwargs: dict[str, Any] = {}
    device_type, device_index = obj.__dlpack_device__()
    if device_type in (_kDLCUDA, _kDLROCM):
        # The producer must order its pending work before torch's current stream reads.
        stream = torch.cuda.current_stream(f"cuda:{device_index}").cuda_stream
        kwargs["stream"] = 1 if device_type == _kDLCUDA and stream == 0 else stream
    if not _TORCH_READS_VERSIONED:
        return obj.__dlpack__(**kwargs)
    try:
        return obj.__dlpack__(max_version=(1, 0), **kwargs)
    except TypeError:  # a producer that predates DLPack 1.0
        return obj.__dlpack__(**kwargs)


def _import_capsule(capsule: Any, what: str) -> torch.Tensor:
    try:
        return torch.from_dlpack(capsule)
    except (BufferError, RuntimeError, ValueError, TypeError) as exc:
        # read before the deleter frees the producer's description of the array
        backwards = _capsule_negative_strides(capsule)
        _delete_unconsumed(capsule)
        if backwards:
            raise UnsupportedArrayError(
                f"to_torch: this {what} has negative strides {backwards} (a reversed view), "
                "which torch cannot import, and the bridge reads foreign memory only through "
                "torch. Pass a copy with positive strides (numpy: np.ascontiguousarray(x); "
                "Julia: copy(x))."
            ) from exc
        raise UnsupportedDTypeError(
            f"to_torch: torch cannot import this {what} ({exc}). Its element type or "
            "device is not one torch reads through DLPack; convert it to a supported dtype "
            "(float16/32/64, bfloat16, integer, bool, complex) first."
        ) from exc


# Where the DLTensor sits in each kind of capsule (after DLManagedTensorVersioned's
# version, manager_ctx, deleter and flags), and where ndim and strides sit in it.
_DLTENSOR_OFFSET = {b"dltensor": 0, b"dltensor_versioned": 32}
_NDIM_OFFSET, _STRIDES_OFFSET = 16, 32


def _capsule_negative_strides(capsule: Any) -> tuple[int, ...] | None:
    """The strides of an unconsumed capsule's tensor when any is negative, else None."""
    name = _capsule_name(capsule)
    if name is None:
        return None
    tensor = _pythonapi.PyCapsule_GetPointer(capsule, name) + _DLTENSOR_OFFSET[name]
    ndim = ctypes.c_int32.from_address(tensor + _NDIM_OFFSET).value
    strides = ctypes.c_void_p.from_address(tensor + _STRIDES_OFFSET).value
    if not strides or ndim <= 0:  # no strides: compact row-major
        return None
    values = tuple((ctypes.c_int64 * ndim).from_address(strides))
    return values if any(v < 0 for v in values) else None


def _delete_unconsumed(capsule: Any) -> None:
    """Run the producer's deleter of a capsule nobody consumed, and mark it used."""
    name = _capsule_name(capsule)
    if name is None:
        return
    pointer = _pythonapi.PyCapsule_GetPointer(capsule, name)
    deleter = ctypes.c_void_p.from_address(pointer + _DELETER_OFFSET[name]).value
    _pythonapi.PyCapsule_SetName(capsule, _USED_NAMES[name])
    if deleter:
        _Deleter(deleter)(pointer)


def _has_buffer(obj: Any) -> bool:
    try:
        memoryview(obj).release()
    except (TypeError, BufferError):
        return False
    return True


def julia_layout(t: torch.Tensor) -> tuple[tuple[int, ...], str, str, int]:
    """julia_layout(t) -> (julia_size, julia_eltype, device_type, device_index)

    What a Julia caller needs to allocate an array that will receive ``t``:
    its size in Julia order, its element type's Julia name, and its device
    (``"cpu"`` with index -1, or ``"cuda"`` with the device index).

    Raises:
        UnsupportedDTypeError: ``t``'s dtype has no Julia element type (the
            float8 formats, quantised types).
    """
    eltype = _JULIA_ELTYPE.get(t.dtype)
    if eltype is None:
        raise UnsupportedDTypeError(
            f"julia_layout: torch dtype {t.dtype} has no Julia element type; convert the "
            f"tensor first (e.g. .float()). Types that cross: {', '.join(_JULIA_ELTYPE.values())}."
        )
    if t.is_cpu:  # the common case, without building device.type's string
        return julia_shape(t.shape), eltype, "cpu", -1
    device = t.device
    index = -1 if device.index is None else device.index
    return julia_shape(t.shape), eltype, device.type, index


def copy_into(destination: Any, source: torch.Tensor, *, layout: Layout = None) -> None:
    """copy_into(destination, source, *, layout=None) -> None

    Copy ``source`` into the memory of ``destination`` (any array
    :func:`to_torch` accepts, with the same ``layout`` rule; typically a Julia
    array shared with ``DLPack.share``). This is how results cross to an owner
    on the other side: the receiving language allocates, owns and frees the
    memory, and torch's tensor can be dropped at once (see NOTE [ownership] in
    :mod:`torchbridge.memory`).

    Raises:
        ReadOnlyArrayError: the destination's producer marked it read-only
            (NOTE [read-only memory]); nothing is written.
        UnsupportedArrayError, UnsupportedDTypeError: the destination's shape
            or element type differs from the source's, it has negative strides
            (NOTE [negative strides]) or a non-native byte order (NOTE [byte
            order]); nothing is written.
    """
    reverse = _reverses(destination, layout)
    target, access = _view(destination, destination=True)
    if access is _READ_ONLY:
        del target
        raise ReadOnlyArrayError(
            f"copy_into: the destination ({type(destination).__name__}) is read-only, so "
            "nothing was written. Pass writable memory (numpy: a copy, or "
            "np.load(..., mmap_mode='r+')); torch cannot honour a read-only flag."
        )
    if reverse:
        target = _reversed(target)
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
