"""Lowerings of ONNX operators to plain torch calls (NOTE [onnx to fx] in onnx_convert).

Each lowering takes a :class:`Node` and returns the node's outputs. It calls
torch on the node's inputs: real tensors when the inputs are known at import
time (the call folds the constant), fx proxies when they are known only at run
time (the call is recorded). ``Node.ints`` reads an input the operator takes as
numbers (a shape, axes, pads) as Python ints when it is known, so the generated
code carries them as literals.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.fx.proxy import Proxy

__all__ = ["BIAS_AFTER", "LOWERINGS", "WEIGHT_SLOTS", "Node", "Unsupported"]


class Unsupported(Exception):
    """This node's attributes or inputs are outside what the lowering converts (the reason)."""


# ONNX TensorProto element types -> torch dtypes
DTYPES = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    4: torch.int32,  # uint16: widened
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    12: torch.int64,  # uint32: widened
    13: torch.int64,  # uint64: narrowed to what torch has
    16: torch.bfloat16,
}
_FLOATS = {1, 10, 11, 16}

#: The inputs of each operator that hold its weights (NOTE [trainable weights] in
#: onnx_convert); only constants there become parameters by default. None: every input.
WEIGHT_SLOTS: dict[str, tuple[int, ...] | None] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),  # the constant one of A and B, and C
    "MatMul": (0, 1),  # the constant operand
    "Einsum": None,  # its constant operands
    "BatchNormalization": (1, 2),  # scale and bias (mean and variance are statistics)
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "GroupNormalization": (1, 2),
    "RMSNormalization": (1,),
    "LSTM": (1, 2, 3),
    "GRU": (1, 2, 3),
    "RNN": (1, 2, 3),
    "Gather": (0,),  # an embedding table
    "PRelu": (1,),
}
#: A constant an Add adds to the output of these is a bias (a linear layer as MatMul + Add).
BIAS_AFTER = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"})


class Node:
    """One ONNX node being lowered: its inputs, attributes and the graph it joins."""

    def __init__(self, conv, g, node, index: int, inputs: list[Any]):
        from onnx import helper

        self.conv, self.g, self.node, self.index = conv, g, node, index
        self.inputs = inputs
        self.attrs: dict[str, Any] = {}
        for attr in node.attribute:
            value = helper.get_attribute_value(attr)
            if isinstance(value, bytes):
                value = value.decode()
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                value = [v.decode() for v in value]
            self.attrs[attr.name] = value
        self.opset = conv.opset
        self.runtime_node = any(isinstance(v, Proxy) for v in inputs)

    def __len__(self) -> int:
        return len(self.inputs)

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def name(self) -> str:
        return self.node.name or f"{self.node.op_type}_{self.node.output[0]}"

    def has(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] is not None

    def const(self, i: int) -> torch.Tensor | None:
        v = self.inputs[i] if i < len(self.inputs) else None
        return v if isinstance(v, torch.Tensor) else None

    def runtime(self, i: int):
        """Input ``i`` as the run-time call takes it: a known tensor becomes an attribute."""
        v = self.inputs[i] if i < len(self.inputs) else None
        if isinstance(v, torch.Tensor) and self.runtime_node:
            return self.g.attr(v, self.node.input[i])
        return v

    def operands(self, i: int, j: int) -> tuple[Any, Any]:
        """Inputs ``i`` and ``j`` of an elementwise operator; a known one-value constant
        becomes a Python number, as plain torch code writes ``x * 0.5`` (no attribute
        read, no broadcast of a one-element tensor)."""
        return self._scalar(i, j), self._scalar(j, i)

    def _scalar(self, i: int, other: int):
        v = self.inputs[i]
        if not (self.runtime_node and isinstance(v, torch.Tensor) and v.numel() == 1):
            return self.runtime(i)
        if v.dtype == torch.bool or v.is_complex():
            return self.runtime(i)
        if self.conv.trainable(self.node.input[i], v):  # a parameter, even of one value
            return self.runtime(i)
        rank = self.rank(other)
        if v.dim() > 0 and (rank is None or rank < v.dim()):
            return self.runtime(i)  # the constant's shape would widen the result
        number = v.item()
        if v.is_floating_point():
            other_type = self.elem_type(other)
            if other_type is not None and other_type not in _FLOATS:
                return self.runtime(i)
            return float(number)
        other_type = self.elem_type(other)
        if other_type is None or other_type in _FLOATS:
            return self.runtime(i)
        return int(number)

    def tensors(self, *idx: int) -> list[Any]:
        idx = idx or tuple(range(len(self.inputs)))
        return [self.runtime(i) for i in idx]

    def ints(self, i: int) -> list[int] | Any | None:
        """Input ``i`` read as numbers: a list of ints when known, else a run-time list."""
        v = self.inputs[i] if i < len(self.inputs) else None
        if v is None:
            return None
        if isinstance(v, torch.Tensor):
            return [int(x) for x in v.reshape(-1).tolist()]
        return self.g.call(_tolist, v)

    def floats(self, i: int) -> list[float] | None:
        v = self.const(i)
        if v is None:
            if self.has(i):
                raise Unsupported(f"input {i} ({self.node.input[i]!r}) must be a constant")
            return None
        return [float(x) for x in v.reshape(-1).tolist()]

    def rank(self, i: int = 0) -> int | None:
        v = self.inputs[i]
        if isinstance(v, torch.Tensor):
            return v.dim()
        return self.g.rank(self.node.input[i])

    def elem_type(self, i: int = 0) -> int | None:
        v = self.inputs[i]
        if isinstance(v, torch.Tensor):
            return next((k for k, d in DTYPES.items() if d == v.dtype), None)
        return self.g.elem_type(self.node.input[i])

    def call(self, fn: Callable, *args, **kwargs):
        return self.g.call(fn, *args, **kwargs)

    def refuse(self, reason: str):
        """Refuse this node outright (an OnnxImportError naming it): unlike
        :class:`Unsupported`, no onnx2pytorch module is tried, since it would
        convert the node just as wrongly."""
        self.conv.refuse(self.node, self.index, self.g.where, reason)

    def module(self, module: torch.nn.Module, *args):
        return self.g.call_module(module, self.name(), args)

    def check_size(self, shape, dtype) -> None:
        import numpy as np

        if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) for d in shape):
            return
        if any(d < 0 for d in shape):
            raise Unsupported(f"a negative dimension in {list(shape)}")
        size = int(np.prod(shape, dtype=object)) * torch.empty(0, dtype=dtype).element_size()
        if size > self.conv.max_bytes:
            from .errors import OnnxImportError

            label = self.conv.label(self.node, self.index, self.g.where)
            raise OnnxImportError(
                f"import_onnx: {self.conv.path}: {label} "
                f"would make a constant of shape {list(shape)} ({size / 1024**3:.3g} GiB), above "
                f"max_tensor_bytes={self.conv.max_bytes}. Nothing was allocated. Raise "
                "max_tensor_bytes if the graph really needs it.",
                [self.node.op_type],
            )


# -- run-time helpers (called from generated code; plain functions so fx can name them) --------


def _tolist(t) -> list[int]:
    return [int(x) for x in t.reshape(-1).tolist()]


def _shape(x, start: int = 0, end: int | None = None):
    # _shape_as_tensor: torch's tracing exporter records it as ONNX Shape (a run-time shape);
    # it is made on the CPU, and shape arithmetic meets the module's constants on x's device
    return torch._shape_as_tensor(x).to(x.device)[start:end]


def _size(x):
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def _div(a, b):
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _expand(x, shape: list[int]):
    return x.expand(torch.broadcast_shapes(x.shape, tuple(shape)))


def _expand_to(x, shape):
    """Expand to a shape tensor computed at run time (NOTE [re-exporting imported graphs])."""
    if not torch.jit.is_tracing():
        return _expand(x, _tolist(shape))
    n, k = max(shape.shape[0], x.dim()), shape.shape[0]
    xdims = [1] * (n - x.dim()) + list(x.shape)
    sizes = []
    for i in range(n):
        if i < n - k:
            sizes.append(-1)
            continue
        size = shape[i - (n - k)]
        # ONNX broadcasts both ways: a 1 in the target keeps the input's dimension
        sizes.append(-1 if xdims[i] != 1 and int(size) == 1 else size)
    return x.expand(sizes)


def _reshape(x, shape: list[int], allowzero: int = 0):
    if not allowzero:
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _reshape_to(x, shape, allowzero: int = 0):
    """Reshape to a shape tensor computed at run time (NOTE [re-exporting imported graphs])."""
    if not torch.jit.is_tracing():
        return _reshape(x, _tolist(shape), allowzero)
    if not allowzero:  # ONNX: a 0 copies the input's dimension
        dims = torch._shape_as_tensor(x).to(shape.device)
        n = shape.shape[0]
        if x.dim() < n:
            ones = torch.ones(n - x.dim(), dtype=dims.dtype, device=shape.device)
            dims = torch.cat([dims, ones])
        shape = torch.where(shape == 0, dims[:n], shape)
    return torch._reshape_from_tensor(x, shape)


def _gather(x, idx, axis: int):
    axis %= x.dim()  # the shape below is sliced around it
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1 :])


_INT_MAX = (2**31 - 1, 2**63 - 1)


def _slice(x, starts, ends, axes, steps):
    """ONNX Slice: a negative start or end counts from the end; then, for a positive
    step, both are clamped to [0, n]; for a negative step, the start to [0, n-1] and the
    end to [-1, n-1] (-1: up to and including the first element)."""
    index = [slice(None)] * x.dim()
    flips = []
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = a + x.dim() if a < 0 else a
        n = x.shape[a]
        s = s + n if s < 0 else s
        if st > 0:
            e = e + n if e < 0 else e
            index[a] = slice(max(0, min(n, s)), max(0, min(n, e)), st)
        else:  # a negative step: walk the flipped axis
            # onnxruntime reads an INT_MAX end as numpy's None: to the first element
            e = -1 if e in _INT_MAX else (e + n if e < 0 else e)
            s, e = max(0, min(n - 1, s)), max(-1, min(n - 1, e))
            index[a] = slice(n - 1 - s, n - 1 - e, -st)
            flips.append(a)
    if flips:
        x = x.flip(flips)
    return x[tuple(index)]


def _arange(start, limit, delta):
    return torch.arange(
        start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device
    )


def _constant_of_shape(shape, value):
    dims = tuple(int(d) for d in shape.tolist())
    return torch.full(dims, value.item(), dtype=value.dtype, device=value.device)


def _split(x, sizes: list[int], axis: int):
    return torch.split(x, sizes, axis)


def _global_pool(x, kind: str):
    dims = tuple(range(2, x.dim()))
    return x.mean(dims, keepdim=True) if kind == "avg" else x.amax(dims, keepdim=True)


def _squeeze(x, axes):
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(axes))


def _unsqueeze(x, axes: list[int]):
    rank = x.dim() + len(axes)
    for a in sorted(a + rank if a < 0 else a for a in axes):
        x = x.unsqueeze(a)
    return x


def _flatten(x, axis: int):
    axis = axis + x.dim() if axis < 0 else axis
    lead = 1
    for d in x.shape[:axis]:
        lead *= d
    return x.reshape(lead, -1)


def _same_pad(x, kernel, strides, dilations, lower: bool, value: float = 0.0):
    pads = []
    for i in range(len(kernel)):
        n = x.shape[2 + i]
        out = -(-n // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - n)
        small, big = total // 2, total - total // 2
        pads.append((big, small) if lower else (small, big))
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat, value=value)


# -- helpers of the lowerings -------------------------------------------------------------------


def _axes_attr_or_input(n: Node, i: int):
    if n.opset >= 13 or n.has(i):
        return n.ints(i) if n.has(i) else None
    return n.attr("axes")


def _torch_pads(onnx_pads: list[int]) -> list[int]:
    """ONNX [b1, b2, ..., e1, e2, ...] (first axis first) -> F.pad's [b_last, e_last, ...]."""
    k = len(onnx_pads) // 2
    out: list[int] = []
    for i in reversed(range(k)):
        out += [onnx_pads[i], onnx_pads[i + k]]
    return out


def _spatial(n: Node, rank: int):
    kernel = n.attr("kernel_shape")
    strides = n.attr("strides") or [1] * rank
    dilations = n.attr("dilations") or [1] * rank
    pads = n.attr("pads") or [0] * (2 * rank)
    return kernel, list(strides), list(dilations), list(pads)


def _pad_for(n: Node, x, kernel, strides, dilations, pads, value=0.0):
    """(x, padding) for a conv/pool: symmetric pads stay the op's padding, others pad first."""
    rank = len(kernel)
    auto = n.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        shape = n.g.shape(n.node.input[0])
        if shape and all(isinstance(d, int) and d > 0 for d in shape[2:]):
            pads = []
            for i in range(rank):
                size = shape[2 + i]
                out = -(-size // strides[i])
                total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
                small, big = total // 2, total - total // 2
                pads.append((big, small) if auto == "SAME_LOWER" else (small, big))
            pads = [p[0] for p in pads] + [p[1] for p in pads]
        else:
            x = n.call(_same_pad, x, kernel, strides, dilations, auto == "SAME_LOWER", value)
            return x, [0] * rank
    elif auto == "VALID":
        pads = [0] * (2 * rank)
    begin, end = pads[:rank], pads[rank:]
    if begin == end:
        return x, begin
    x = n.call(F.pad, x, _torch_pads(pads), "constant", value)
    return x, [0] * rank


def _keep(n: Node, default_keep: int = 1) -> bool:
    return bool(n.attr("keepdims", default_keep))


# -- the lowerings -----------------------------------------------------------------------------

LOWERINGS: dict[str, Callable[[Node], Any]] = {}


def lowering(*names: str):
    def register(fn):
        for name in names:
            LOWERINGS[name] = fn
        return fn

    return register


_UNARY = {
    "Abs": torch.abs,
    "Acos": torch.acos,
    "Asin": torch.asin,
    "Atan": torch.atan,
    "Ceil": torch.ceil,
    "Cos": torch.cos,
    "Cosh": torch.cosh,
    "Erf": torch.erf,
    "Exp": torch.exp,
    "Floor": torch.floor,
    "IsNaN": torch.isnan,
    "Log": torch.log,
    "Neg": torch.neg,
    "Not": torch.logical_not,
    "Reciprocal": torch.reciprocal,
    "Relu": torch.relu,
    "Round": torch.round,
    "Sigmoid": torch.sigmoid,
    "Sign": torch.sign,
    "Sin": torch.sin,
    "Sinh": torch.sinh,
    "Sqrt": torch.sqrt,
    "Tan": torch.tan,
    "Tanh": torch.tanh,
    "Softsign": F.softsign,
    "Mish": F.mish,
}


@lowering(*_UNARY)
def _unary(n: Node):
    (x,) = n.tensors(0)
    return n.call(_UNARY[n.node.op_type], x)


@lowering("Softplus")
def _softplus(n: Node):
    (x,) = n.tensors(0)
    return n.call(F.softplus, x)


_BINARY = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Pow": torch.pow,
    "Equal": torch.eq,
    "Greater": torch.gt,
    "Less": torch.lt,
    "GreaterOrEqual": torch.ge,
    "LessOrEqual": torch.le,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "BitShift": None,
}


@lowering("Add", "Sub", "Mul", "Pow", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual")
@lowering("And", "Or", "Xor")
def _binary(n: Node):
    if n.opset < 7 and n.attr("broadcast"):
        raise Unsupported("pre-opset-7 broadcasting (upgrade the file's opset)")
    a, b = n.operands(0, 1) if n.node.op_type in ("Add", "Sub", "Mul", "Pow") else n.tensors(0, 1)
    fn = _BINARY[n.node.op_type]
    if n.node.op_type == "Pow":
        if isinstance(b, float) and b.is_integer():
            b = int(b)
        out = n.call(torch.pow, a, b)
        ta = n.elem_type(0)
        if ta is not None and ta not in _FLOATS:
            out = n.call(torch.Tensor.to, out, DTYPES[ta])
        return out
    return n.call(fn, a, b)


@lowering("Div")
def _div_lowering(n: Node):
    a, b = n.operands(0, 1)
    ta, tb = n.elem_type(0), n.elem_type(1)
    if ta in _FLOATS or tb in _FLOATS:
        return n.call(operator.truediv, a, b)
    if ta is not None and tb is not None:
        return n.call(torch.div, a, b, rounding_mode="trunc")
    return n.call(_div, a, b)


@lowering("Mod")
def _mod(n: Node):
    a, b = n.tensors(0, 1)
    return n.call(torch.fmod if n.attr("fmod", 0) else torch.remainder, a, b)


@lowering("Max", "Min", "Sum", "Mean")
def _variadic(n: Node):
    xs = n.tensors()
    fn = {"Max": torch.maximum, "Min": torch.minimum}.get(n.node.op_type, operator.add)
    out = xs[0]
    for x in xs[1:]:
        out = n.call(fn, out, x)
    if n.node.op_type == "Mean" and len(xs) > 1:
        out = n.call(operator.truediv, out, len(xs))
    return out


@lowering("Where")
def _where(n: Node):
    c, a, b = n.tensors(0, 1, 2)
    return n.call(torch.where, c, a, b)


@lowering("Identity", "Dropout")
def _identity(n: Node):
    if n.node.op_type == "Dropout" and len(n.node.output) > 1 and n.node.output[1]:
        x = n.inputs[0]
        return [x, n.call(torch.ones_like, n.runtime(0), dtype=torch.bool)]
    return n.inputs[0]


@lowering("Constant")
def _constant(n: Node):
    import numpy as np
    from onnx import numpy_helper

    for attr in n.node.attribute:
        if attr.name in ("value", "sparse_value"):
            if attr.name == "sparse_value":
                raise Unsupported("sparse constants")
            return torch.from_numpy(np.array(numpy_helper.to_array(attr.t), copy=True))
        if attr.name in ("value_float", "value_floats"):
            return torch.tensor(n.attrs[attr.name], dtype=torch.float32)
        if attr.name in ("value_int", "value_ints"):
            return torch.tensor(n.attrs[attr.name], dtype=torch.int64)
    raise Unsupported("a Constant without a numeric value")


@lowering("Cast")
def _cast(n: Node):
    to = n.attr("to")
    if to not in DTYPES:
        raise Unsupported(f"cast to ONNX type {to}")
    (x,) = n.tensors(0)
    return n.call(torch.Tensor.to, x, DTYPES[to])


@lowering("CastLike")
def _cast_like(n: Node):
    x, like = n.tensors(0, 1)
    return n.call(torch.Tensor.type_as, x, like)


@lowering("Shape")
def _shape_lowering(n: Node):
    start, end = n.attr("start", 0), n.attr("end")
    x = n.inputs[0]
    if isinstance(x, torch.Tensor):
        return torch.tensor(x.shape[start:end], dtype=torch.int64)
    shape = n.g.shape(n.node.input[0])
    if shape is not None:
        dims = list(shape)[start:end]
        if all(isinstance(d, int) and d > 0 for d in dims):
            return torch.tensor(dims, dtype=torch.int64)
    return n.call(_shape, x, start, end)


@lowering("Size")
def _size_lowering(n: Node):
    x = n.inputs[0]
    if isinstance(x, torch.Tensor):
        return torch.tensor(x.numel(), dtype=torch.int64)
    return n.call(_size, x)


@lowering("Reshape")
def _reshape_lowering(n: Node):
    (x,) = n.tensors(0)
    shape = n.ints(1)
    allowzero = n.attr("allowzero", 0)
    if isinstance(shape, list):
        if not allowzero and 0 in shape:
            known = n.g.shape(n.node.input[0]) if not isinstance(x, torch.Tensor) else x.shape
            if known is not None and all(
                isinstance(known[i], int) and known[i] > 0 for i, d in enumerate(shape) if d == 0
            ):
                shape = [known[i] if d == 0 else d for i, d in enumerate(shape)]
            else:
                return n.call(_reshape, x, shape, allowzero)
        return n.call(torch.reshape, x, shape)
    return n.call(_reshape_to, x, n.runtime(1), allowzero)


@lowering("Flatten")
def _flatten_lowering(n: Node):
    (x,) = n.tensors(0)
    axis = n.attr("axis", 1)
    if axis == 1:
        return n.call(torch.flatten, x, 1)
    return n.call(_flatten, x, axis)


@lowering("Transpose")
def _transpose(n: Node):
    (x,) = n.tensors(0)
    perm = n.attr("perm")
    if perm is None:
        rank = n.rank(0)
        if rank is None:
            raise Unsupported("a Transpose without perm on an input of unknown rank")
        perm = list(reversed(range(rank)))
    return n.call(torch.permute, x, list(perm))


@lowering("Concat")
def _concat(n: Node):
    xs = [x for x in n.tensors() if x is not None]
    return n.call(torch.cat, xs, n.attr("axis"))


@lowering("Squeeze")
def _squeeze_lowering(n: Node):
    (x,) = n.tensors(0)
    axes = _axes_attr_or_input(n, 1)
    if axes is None:
        return n.call(torch.squeeze, x)
    if isinstance(axes, list):
        return n.call(torch.squeeze, x, tuple(axes))
    return n.call(_squeeze, x, axes)


@lowering("Unsqueeze")
def _unsqueeze_lowering(n: Node):
    (x,) = n.tensors(0)
    axes = _axes_attr_or_input(n, 1)
    if isinstance(axes, list) and len(axes) == 1:
        return n.call(torch.unsqueeze, x, axes[0])
    return n.call(_unsqueeze, x, axes)


@lowering("Slice")
def _slice_lowering(n: Node):
    (x,) = n.tensors(0)
    if n.opset < 10:
        starts, ends = n.attr("starts"), n.attr("ends")
        axes = n.attr("axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = n.ints(1), n.ints(2)
        axes = n.ints(3) if n.has(3) else None
        steps = n.ints(4) if n.has(4) else None
        if axes is None:
            axes = list(range(len(starts))) if isinstance(starts, list) else None
        if steps is None:
            steps = [1] * len(starts) if isinstance(starts, list) else None
    if all(isinstance(v, list) for v in (starts, ends, axes, steps)) and all(s > 0 for s in steps):
        rank = n.rank(0)
        if rank is not None and all(-rank <= a < rank for a in axes):
            index: list[Any] = [slice(None)] * rank
            big = 2**62
            for s, e, a, st in zip(starts, ends, axes, steps):
                # exporters write INT64_MIN/MAX for "from the start"/"to the end"
                start = None if s <= -big or s == 0 else min(s, big)
                end = None if e >= big else max(e, -big)
                index[a] = slice(start, end, None if st == 1 else st)
            while index and index[-1] == slice(None):
                index.pop()
            return n.call(operator.getitem, x, tuple(index))
    if any(not isinstance(v, list) for v in (starts, ends, axes, steps)):
        raise Unsupported("Slice bounds computed at run time together with unknown axes or steps")
    return n.call(_slice, x, starts, ends, axes, steps)


@lowering("Gather")
def _gather_lowering(n: Node):
    axis = n.attr("axis", 0)
    (x,) = n.tensors(0)
    idx = n.const(1)
    if idx is not None and idx.dim() == 0 and not isinstance(x, torch.Tensor):
        return n.call(torch.select, x, axis, int(idx))
    if (
        idx is not None
        and idx.dim() == 1
        and bool((idx >= 0).all())
        and not isinstance(x, torch.Tensor)
    ):
        return n.call(torch.index_select, x, axis, n.runtime(1))
    return n.call(_gather, x, n.runtime(1), axis)


@lowering("GatherElements")
def _gather_elements(n: Node):
    x, idx = n.tensors(0, 1)
    axis = n.attr("axis", 0)
    return n.call(torch.gather, x, axis, n.call(_nonneg, idx, x, axis))


def _nonneg(idx, x, axis: int):
    return torch.where(idx < 0, idx + x.shape[axis], idx)


@lowering("Expand")
def _expand_lowering(n: Node):
    (x,) = n.tensors(0)
    shape = n.ints(1)
    if isinstance(x, torch.Tensor) and isinstance(shape, list):
        out = torch.broadcast_shapes(x.shape, tuple(shape))
        n.check_size(list(out), x.dtype)
        return x.expand(out).clone()
    if isinstance(shape, list):
        return n.call(_expand, x, shape)
    return n.call(_expand_to, x, n.runtime(1))


@lowering("Tile")
def _tile(n: Node):
    (x,) = n.tensors(0)
    reps = n.ints(1)
    if isinstance(x, torch.Tensor) and isinstance(reps, list):
        n.check_size([a * b for a, b in zip(x.shape, reps)], x.dtype)
    return n.call(torch.Tensor.repeat, x, reps)


@lowering("ConstantOfShape")
def _constant_of_shape_lowering(n: Node):
    import numpy as np
    from onnx import numpy_helper

    value = n.attrs.get("value")
    if value is None:
        fill = torch.zeros((), dtype=torch.float32)
    else:
        fill = torch.from_numpy(np.array(numpy_helper.to_array(value)).reshape(-1)[:1].copy())
        fill = fill.reshape(())
    shape = n.ints(0)
    if isinstance(shape, list):
        n.check_size(shape, fill.dtype)
        return torch.full(shape, fill.item(), dtype=fill.dtype)
    return n.call(_constant_of_shape, n.runtime(0), n.g.attr(fill, f"{n.name()}.value"))


@lowering("Range")
def _range(n: Node):
    start, limit, delta = (n.const(i) for i in range(3))
    if start is not None and limit is not None and delta is not None:
        count = max(0, math.ceil((limit.item() - start.item()) / delta.item()))
        n.check_size([count], start.dtype)
        return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)
    return n.call(_arange, *n.tensors(0, 1, 2))


@lowering("Split")
def _split_lowering(n: Node):
    (x,) = n.tensors(0)
    axis = n.attr("axis", 0)
    parts = len(n.node.output)
    if n.opset < 13:
        sizes = n.attr("split")
    else:
        sizes = n.ints(1) if n.has(1) else None
    if sizes is None:
        shape = x.shape if isinstance(x, torch.Tensor) else n.g.shape(n.node.input[0])
        length = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
        if not isinstance(length, int) or length <= 0:
            out = n.call(torch.chunk, x, parts, axis)
            return [out[i] for i in range(parts)]
        chunk = -(-length // parts)
        sizes = [min(chunk, length - i * chunk) for i in range(parts)]
    out = n.call(_split if not isinstance(sizes, list) else torch.split, x, sizes, axis)
    return [out[i] for i in range(parts)]


@lowering("Pad")
def _pad(n: Node):
    (x,) = n.tensors(0)
    mode = n.attr("mode", "constant")
    if n.opset < 11:
        pads, value, axes = n.attr("pads"), n.attr("value", 0.0), None
    else:
        pads = n.ints(1)
        value = n.floats(2)[0] if n.has(2) else 0.0
        axes = n.ints(3) if n.has(3) else None
    if not isinstance(pads, list):
        raise Unsupported("pads computed at run time")
    rank = n.rank(0)
    if axes is not None:
        if rank is None:
            raise Unsupported("Pad with axes on an input of unknown rank")
        full = [0] * (2 * rank)
        for j, a in enumerate(axes):
            a = a + rank if a < 0 else a
            full[a] = pads[j]
            full[a + rank] = pads[j + len(axes)]
        pads = full
    torch_pads = _torch_pads(pads)
    while len(torch_pads) > 2 and torch_pads[-1] == 0 and torch_pads[-2] == 0:
        torch_pads = torch_pads[:-2]
    torch_mode = {
        "constant": "constant",
        "reflect": "reflect",
        "edge": "replicate",
        "wrap": "circular",
    }
    if mode not in torch_mode:
        raise Unsupported(f"Pad mode {mode!r}")
    if mode == "constant":
        return n.call(F.pad, x, torch_pads, "constant", value)
    return n.call(F.pad, x, torch_pads, torch_mode[mode])


@lowering("Clip")
def _clip(n: Node):
    (x,) = n.tensors(0)
    if n.opset < 11:  # attributes, floating-point inputs only
        lo, hi, floating = n.attr("min"), n.attr("max"), True
    else:  # the bounds have the input's type: integers stay ints (clamp keeps the dtype)
        lo, hi = _clip_bound(n, 1), _clip_bound(n, 2)
        floating = n.elem_type(0) in _FLOATS or isinstance(lo if lo is not None else hi, float)
    if floating and lo == 0.0 and hi == 6.0:
        return n.call(F.relu6, x)
    if floating and lo is not None and hi is not None:
        return n.call(F.hardtanh, x, lo, hi)
    return n.call(torch.clamp, x, lo, hi)


def _clip_bound(n: Node, i: int) -> int | float | None:
    if not n.has(i):
        return None
    v = n.const(i)
    if v is None:
        raise Unsupported(f"input {i} ({n.node.input[i]!r}) must be a constant")
    return v.reshape(-1)[0].item()


@lowering("LeakyRelu")
def _leaky(n: Node):
    (x,) = n.tensors(0)
    return n.call(F.leaky_relu, x, n.attr("alpha", 0.01))


@lowering("Elu")
def _elu(n: Node):
    (x,) = n.tensors(0)
    return n.call(F.elu, x, n.attr("alpha", 1.0))


@lowering("Selu")
def _selu(n: Node):
    (x,) = n.tensors(0)
    alpha, gamma = (
        n.attr("alpha", 1.67326319217681884765625),
        n.attr("gamma", 1.05070102214813232421875),
    )
    return n.call(operator.mul, n.call(F.elu, x, alpha), gamma)


@lowering("Celu")
def _celu(n: Node):
    (x,) = n.tensors(0)
    return n.call(F.celu, x, n.attr("alpha", 1.0))


@lowering("HardSigmoid")
def _hard_sigmoid(n: Node):
    (x,) = n.tensors(0)
    alpha, beta = n.attr("alpha", 0.2), n.attr("beta", 0.5)
    if abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
        return n.call(F.hardsigmoid, x)
    return n.call(F.hardtanh, n.call(torch.add, n.call(operator.mul, x, alpha), beta), 0.0, 1.0)


@lowering("HardSwish")
def _hard_swish(n: Node):
    (x,) = n.tensors(0)
    return n.call(F.hardswish, x)


@lowering("Gelu")
def _gelu(n: Node):
    (x,) = n.tensors(0)
    return n.call(F.gelu, x, approximate=n.attr("approximate", "none"))


@lowering("PRelu")
def _prelu(n: Node):
    x, slope = n.tensors(0, 1)
    return n.call(torch.where, n.call(torch.ge, x, 0), x, n.call(operator.mul, x, slope))


@lowering("ThresholdedRelu")
def _thresholded(n: Node):
    (x,) = n.tensors(0)
    alpha = n.attr("alpha", 1.0)
    return n.call(torch.where, n.call(torch.gt, x, alpha), x, n.call(torch.zeros_like, x))


@lowering("Softmax", "LogSoftmax")
def _softmax(n: Node):
    (x,) = n.tensors(0)
    fn = F.softmax if n.node.op_type == "Softmax" else F.log_softmax
    axis = n.attr("axis", -1 if n.opset >= 13 else 1)
    if n.opset >= 13:
        return n.call(fn, x, axis)
    rank = n.rank(0)
    if rank is not None and (axis == -1 or axis == rank - 1):
        return n.call(fn, x, -1)
    # before opset 13: over all dimensions from axis on, as one
    flat = n.call(torch.flatten, x, axis)
    shape = n.call(getattr, x, "shape") if isinstance(x, Proxy) else x.shape
    return n.call(torch.reshape, n.call(fn, flat, -1), shape)


@lowering("MatMul")
def _matmul(n: Node):
    a, b = n.tensors(0, 1)
    return n.call(torch.matmul, a, b)


@lowering("Gemm")
def _gemm(n: Node):
    a, b = n.tensors(0, 1)
    c = n.runtime(2) if n.has(2) else None
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    ta, tb = n.attr("transA", 0), n.attr("transB", 0)
    if ta:
        a = n.call(torch.t, a)
    if alpha == 1.0 and beta == 1.0 and tb:
        return n.call(F.linear, a, b, c)
    if tb:
        b = n.call(torch.t, b)
    out = n.call(torch.matmul, a, b)
    if alpha != 1.0:
        out = n.call(operator.mul, out, alpha)
    if c is not None:
        out = n.call(operator.add, out, c if beta == 1.0 else n.call(operator.mul, c, beta))
    return out


@lowering("Einsum")
def _einsum(n: Node):
    return n.call(torch.einsum, n.attr("equation"), *n.tensors())


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@lowering("Conv")
def _conv(n: Node):
    w0 = n.const(1)
    wrank = w0.dim() if w0 is not None else n.rank(1)
    if wrank is None or wrank - 2 not in _CONV:
        raise Unsupported("a Conv weight of unknown or unsupported rank")
    rank = wrank - 2
    x, w = n.tensors(0, 1)
    b = n.runtime(2) if n.has(2) else None
    kernel = n.attr("kernel_shape") or (list(w0.shape[2:]) if w0 is not None else None)
    _, strides, dilations, pads = _spatial(n, rank)
    if kernel is None:
        raise Unsupported("a Conv without kernel_shape whose weight is computed at run time")
    x, padding = _pad_for(n, x, kernel, strides, dilations, pads)
    return n.call(_CONV[rank], x, w, b, strides, padding, dilations, n.attr("group", 1))


@lowering("ConvTranspose")
def _conv_transpose(n: Node):
    w0 = n.const(1)
    wrank = w0.dim() if w0 is not None else n.rank(1)
    if wrank is None or wrank - 2 not in _CONV_T:
        raise Unsupported("a ConvTranspose weight of unknown or unsupported rank")
    rank = wrank - 2
    if n.attr("output_shape") is not None or n.attr("auto_pad", "NOTSET") not in (
        "NOTSET",
        "VALID",
    ):
        raise Unsupported("ConvTranspose with output_shape or auto_pad SAME")
    x, w = n.tensors(0, 1)
    b = n.runtime(2) if n.has(2) else None
    _, strides, dilations, pads = _spatial(n, rank)
    if pads[:rank] != pads[rank:]:
        raise Unsupported("ConvTranspose with asymmetric pads")
    out_pad = n.attr("output_padding") or [0] * rank
    return n.call(
        _CONV_T[rank], x, w, b, strides, pads[:rank], out_pad, n.attr("group", 1), dilations
    )


@lowering("MaxPool", "AveragePool")
def _pool(n: Node):
    if len(n.node.output) > 1 and n.node.output[1]:
        raise Unsupported("MaxPool's Indices output")
    kernel = n.attr("kernel_shape")
    rank = len(kernel)
    _, strides, dilations, pads = _spatial(n, rank)
    (x,) = n.tensors(0)
    ceil = bool(n.attr("ceil_mode", 0))
    if n.node.op_type == "MaxPool":
        x, padding = _pad_for(n, x, kernel, strides, dilations, pads, value=float("-inf"))
        if any(2 * p > k for p, k in zip(padding, kernel)):
            x = n.call(F.pad, x, _torch_pads(padding + padding), "constant", float("-inf"))
            padding = [0] * rank
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
        return n.call(fn, x, kernel, strides, padding, dilations, ceil)
    if any(d != 1 for d in dilations):
        raise Unsupported("AveragePool with dilations")
    include = bool(n.attr("count_include_pad", 0))
    auto = n.attr("auto_pad", "NOTSET")
    begin, end = pads[:rank], pads[rank:]
    if auto != "NOTSET" or begin != end:
        if not include and any(pads):
            raise Unsupported(
                "AveragePool with asymmetric or automatic pads excluded from the count"
            )
        x, padding = _pad_for(n, x, kernel, strides, dilations, pads)
    else:
        padding = begin
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise Unsupported("AveragePool with pads larger than half the kernel")
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
    return n.call(fn, x, kernel, strides, padding, ceil, include)


@lowering("GlobalAveragePool", "GlobalMaxPool")
def _global_pool_lowering(n: Node):
    (x,) = n.tensors(0)
    avg = n.node.op_type == "GlobalAveragePool"
    rank = n.rank(0)
    if rank is not None:
        dims = tuple(range(2, rank))
        if avg:
            return n.call(torch.mean, x, dims, keepdim=True)
        return n.call(torch.amax, x, dims, keepdim=True)
    return n.call(_global_pool, x, "avg" if avg else "max")


class OnnxBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """ONNX BatchNormalization: ``torch.nn.BatchNorm2d`` for any rank (NOTE [inference graphs])."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"BatchNormalization expects at least 2 dimensions, got {input.dim()}")


@lowering("BatchNormalization")
def _batch_norm(n: Node):
    scale, bias, mean, var = (n.const(i) for i in (1, 2, 3, 4))
    if any(v is None for v in (scale, bias, mean, var)):
        raise Unsupported("BatchNormalization whose scale, bias, mean or variance is not constant")
    if n.attr("training_mode", 0):
        raise Unsupported("BatchNormalization in training mode (its statistics outputs)")
    bn = OnnxBatchNorm(
        scale.numel(), eps=n.attr("epsilon", 1e-5), momentum=1.0 - n.attr("momentum", 0.9)
    )
    with torch.no_grad():
        bn.weight.copy_(scale.reshape(-1))
        bn.bias.copy_(bias.reshape(-1))
        bn.running_mean.copy_(mean.reshape(-1))
        bn.running_var.copy_(var.reshape(-1))
    bn.train(False)
    frozen = {
        leaf
        for i, leaf in ((1, "weight"), (2, "bias"))
        if not n.conv.trainable(n.node.input[i], n.inputs[i])
    }
    if frozen:  # NOTE [trainable weights]
        from .onnx_convert import freeze

        freeze(bn, frozen)
    (x,) = n.tensors(0)
    out = n.module(bn, x)
    return [out] + [None] * (len(n.node.output) - 1)


@lowering("InstanceNormalization")
def _instance_norm(n: Node):
    x, scale, bias = n.tensors(0, 1, 2)
    return n.call(F.instance_norm, x, None, None, scale, bias, False, 0.0, n.attr("epsilon", 1e-5))


@lowering("LayerNormalization")
def _layer_norm(n: Node):
    axis = n.attr("axis", -1)
    scale0 = n.const(1)
    rank = n.rank(0)
    if axis < 0 and scale0 is not None and scale0.dim() == -axis:
        normalized = list(scale0.shape)
    elif rank is not None and scale0 is not None:
        a = axis + rank if axis < 0 else axis
        if scale0.dim() != rank - a:
            raise Unsupported("LayerNormalization whose scale does not span the normalised axes")
        normalized = list(scale0.shape)
    else:
        raise Unsupported("LayerNormalization with a run-time scale on an input of unknown rank")
    if len(n.node.output) > 1 and any(n.node.output[1:]):
        raise Unsupported("LayerNormalization's Mean and InvStdDev outputs")
    x, scale = n.tensors(0, 1)
    bias = n.runtime(2) if n.has(2) else None
    return n.call(F.layer_norm, x, normalized, scale, bias, n.attr("epsilon", 1e-5))


def _integer_dtype(n: Node, i: int) -> torch.dtype | None:
    """The torch dtype of input ``i`` when it is known to be an integer type."""
    elem = n.elem_type(i)
    if elem is None or elem in _FLOATS or elem == 9 or elem not in DTYPES:
        return None
    return DTYPES[elem]


def _reduce(n: Node, fn_name: str):
    (x,) = n.tensors(0)
    keep = _keep(n)
    if (n.node.op_type == "ReduceSum" and n.opset >= 13) or n.opset >= 18:
        axes = n.ints(1) if n.has(1) else None
    else:
        axes = n.attr("axes")
    if axes is None or axes == []:
        if n.attr("noop_with_empty_axes", 0):
            return x
        rank = n.rank(0)
        if rank is None:
            raise Unsupported("a reduction over all axes of an input of unknown rank")
        axes = list(range(rank))
    if not isinstance(axes, list):
        raise Unsupported("reduction axes computed at run time")
    dims = tuple(axes)
    if fn_name == "prod":  # one axis at a time: later axes first, so earlier ones keep their index
        rank = n.rank(0)
        if rank is not None:
            dims = tuple(sorted({d % rank for d in dims}))
        elif any(d < 0 for d in dims) and any(d >= 0 for d in dims):
            raise Unsupported("ReduceProd over negative and non-negative axes of unknown rank")
        dims = tuple(sorted(dims, reverse=all(d >= 0 for d in dims)))
    integer = _integer_dtype(n, 0)
    if integer is not None and fn_name in ("mean", "l2", "logsumexp", "logsum"):
        # torch computes these in floating point only: in float64, back to the input's type
        out = _reduction(n, fn_name, n.call(torch.Tensor.double, x), dims, keep, None)
        return n.call(torch.Tensor.to, out, integer)
    return _reduction(n, fn_name, x, dims, keep, integer)


def _reduction(n: Node, fn_name: str, x, dims: tuple, keep: bool, integer):
    # torch.sum and torch.prod widen integers to int64; ONNX keeps the input's type
    dtype = {"dtype": integer} if integer not in (None, torch.int64) else {}
    if fn_name == "mean":
        return n.call(torch.mean, x, dims, keepdim=keep)
    if fn_name == "sum":
        return n.call(torch.sum, x, dims, keepdim=keep, **dtype)
    if fn_name == "max":
        return n.call(torch.amax, x, dims, keepdim=keep)
    if fn_name == "min":
        return n.call(torch.amin, x, dims, keepdim=keep)
    if fn_name == "prod":
        out = x
        for d in dims:
            out = n.call(torch.prod, out, d, keepdim=keep, **dtype)
        return out
    if fn_name == "l2":
        return n.call(torch.linalg.vector_norm, x, 2, dims, keep)
    if fn_name == "l1":
        if integer is not None:  # vector_norm takes floating point only
            return n.call(torch.sum, n.call(torch.abs, x), dims, keepdim=keep, **dtype)
        return n.call(torch.linalg.vector_norm, x, 1, dims, keep)
    if fn_name == "logsumexp":
        return n.call(torch.logsumexp, x, dims, keep)
    if fn_name == "sumsquare":
        return n.call(torch.sum, n.call(torch.square, x), dims, keepdim=keep, **dtype)
    if fn_name == "logsum":
        return n.call(torch.log, n.call(torch.sum, x, dims, keepdim=keep))
    raise Unsupported(fn_name)


for _op, _fn in {
    "ReduceMean": "mean",
    "ReduceSum": "sum",
    "ReduceMax": "max",
    "ReduceMin": "min",
    "ReduceProd": "prod",
    "ReduceL2": "l2",
    "ReduceL1": "l1",
    "ReduceLogSumExp": "logsumexp",
    "ReduceSumSquare": "sumsquare",
    "ReduceLogSum": "logsum",
}.items():
    LOWERINGS[_op] = lambda n, _fn=_fn: _reduce(n, _fn)


@lowering("ArgMax", "ArgMin")
def _arg(n: Node):
    if n.attr("select_last_index", 0):
        raise Unsupported("select_last_index")
    (x,) = n.tensors(0)
    fn = torch.argmax if n.node.op_type == "ArgMax" else torch.argmin
    return n.call(fn, x, n.attr("axis", 0), _keep(n))


@lowering("CumSum")
def _cumsum(n: Node):
    if n.attr("exclusive", 0) or n.attr("reverse", 0):
        raise Unsupported("exclusive or reverse CumSum")
    (x,) = n.tensors(0)
    axis = n.ints(1)
    if not isinstance(axis, list):
        raise Unsupported("a CumSum axis computed at run time")
    integer = _integer_dtype(n, 0)  # torch.cumsum widens integers to int64
    if integer not in (None, torch.int64):
        return n.call(torch.cumsum, x, axis[0], dtype=integer)
    return n.call(torch.cumsum, x, axis[0])


@lowering("TopK")
def _topk(n: Node):
    (x,) = n.tensors(0)
    k = n.ints(1)
    if not isinstance(k, list):
        raise Unsupported("a TopK k computed at run time")
    out = n.call(torch.topk, x, k[0], n.attr("axis", -1), bool(n.attr("largest", 1)), True)
    return [out[0], out[1]]


@lowering("DepthToSpace")
def _depth_to_space(n: Node):
    if n.attr("mode", "DCR") != "CRD":
        return _fallback(n)
    (x,) = n.tensors(0)
    return n.call(F.pixel_shuffle, x, n.attr("blocksize"))


def _fallback(n: Node):
    """This node through onnx2pytorch's module (NOTE [onnx to fx])."""
    return n.conv.fallback(n)


# NOTE [nearest resize]
# ONNX's nearest Resize maps each output position to an input coordinate (the
# coordinate_transformation_mode) and rounds it (the nearest_mode); onnxruntime computes
# both in float32. torch's "nearest" is asymmetric coordinates rounded down and
# "nearest-exact" is half-pixel rounded half up (= tf_half_pixel_for_nn rounded down);
# torch multiplies by 1/scale where onnxruntime divides by the scale, which picks the
# same pixels for every input size only when the scale is a power of two. Every other
# pair, or scale, runs _resize_nearest: the indices computed as onnxruntime does, then
# index_select (differentiable in the input like any gather).
_COORDINATES = (
    "half_pixel",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
    "half_pixel_symmetric",
)
_ROUNDINGS = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")
_NEAREST_IN_TORCH = {
    ("asymmetric", "floor"): "nearest",
    ("half_pixel", "round_prefer_ceil"): "nearest-exact",
    ("tf_half_pixel_for_nn", "floor"): "nearest-exact",
}


def _exact_in_torch(scales, sizes) -> bool:
    """Whether torch's kernel picks onnxruntime's pixels for every input size (NOTE [nearest
    resize]): scales given, each a power of two."""
    if sizes is not None or not scales:
        return False
    return all(s > 0 and math.frexp(s)[0] == 0.5 for s in scales[2:])


def _nearest_index(n_in: int, n_out: int, scale, ctm: str, rounding: str, device):
    """The input index each output position reads along one axis (ONNX Resize, nearest)."""
    import numpy as np

    f32 = np.float32
    x = torch.arange(n_out, dtype=torch.float32, device=device)
    if ctm == "asymmetric":
        coord = x / scale
    elif ctm == "tf_half_pixel_for_nn":
        coord = (x + 0.5) / scale
    elif ctm == "align_corners":
        coord = x * f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else torch.zeros_like(x)
    elif ctm == "pytorch_half_pixel" and n_out <= 1:
        coord = torch.zeros_like(x)
    elif ctm == "half_pixel_symmetric":  # the offset in float32, the sum in float64
        adjustment = f32(n_out) / (scale * f32(n_in))
        offset = f32(n_in) / f32(2) * (f32(1) - adjustment)
        coord = (float(offset) + (x.double() + 0.5) / float(scale) - 0.5).float()
    else:  # half_pixel, pytorch_half_pixel
        coord = (x + 0.5) / scale - 0.5
    if rounding == "simple":
        rounding = "ceil" if scale < 1 else "floor"
    if rounding == "floor":
        index = torch.floor(coord)
    elif rounding == "ceil":
        index = torch.ceil(coord)
    else:
        tie = coord == torch.floor(coord) + 0.5
        pick = torch.floor(coord) if rounding == "round_prefer_floor" else torch.ceil(coord)
        index = torch.where(tie, pick, torch.round(coord))
    return index.clamp(0, n_in - 1).long()


def _resize_nearest(x, scales, sizes, ctm: str, rounding: str):
    """ONNX nearest Resize over the axes after the first two (NOTE [nearest resize])."""
    import numpy as np

    f32 = np.float32
    for i in range(x.dim() - 2):
        n_in = x.shape[2 + i]
        if sizes is not None:
            n_out = int(sizes[i])
            scale = f32(n_out) / f32(n_in)
        else:
            scale = f32(scales[i])
            n_out = int(scale * f32(n_in))
        index = _nearest_index(n_in, n_out, scale, ctm, rounding, x.device)
        x = x.index_select(2 + i, index)
    return x


@lowering("Resize", "Upsample")
def _resize(n: Node):
    (x,) = n.tensors(0)
    rank = n.rank(0)
    mode = n.attr("mode", "nearest")
    if n.node.op_type == "Upsample":
        scales = n.attr("scales") if n.opset < 9 else n.floats(1)
        sizes = None
        ctm = "asymmetric"
    else:
        if n.opset < 11:
            scales, sizes = n.floats(1), None
            ctm = "asymmetric"
        else:
            scales = (
                n.floats(2) if n.has(2) and n.const(2) is not None and n.const(2).numel() else None
            )
            sizes = n.ints(3) if n.has(3) else None
            ctm = n.attr("coordinate_transformation_mode", "half_pixel")
        if n.attr("antialias", 0) or n.attr("axes") is not None:
            raise Unsupported("Resize with antialias or axes")
        if n.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise Unsupported("Resize with a keep_aspect_ratio_policy")
    if rank is None:
        rank = len(scales) if scales else (len(sizes) if isinstance(sizes, list) else None)
    if rank is None or rank < 3:
        raise Unsupported("Resize of an input of unknown rank or rank below 3")
    if scales and any(s != 1.0 for s in scales[:2]):
        raise Unsupported("Resize over the batch or channel axis")
    spatial = rank - 2
    if mode == "nearest":
        # onnxruntime's Upsample and Resize-10 round down when enlarging, up when shrinking
        old = n.node.op_type == "Upsample" or n.opset < 11
        nearest = "simple" if old else n.attr("nearest_mode", "round_prefer_floor")
        if ctm not in _COORDINATES or nearest not in _ROUNDINGS:
            raise Unsupported(f"nearest Resize with {ctm} coordinates and {nearest} rounding")
        torch_mode = _NEAREST_IN_TORCH.get((ctm, nearest))
        if old and scales and all(s >= 1 for s in scales):
            torch_mode = "nearest"
        if torch_mode is None or not _exact_in_torch(scales, sizes):
            if sizes is not None:
                spatial_sizes = (
                    sizes[2:]
                    if isinstance(sizes, list)
                    else n.call(operator.getitem, sizes, slice(2, None))
                )
                return n.call(_resize_nearest, x, None, spatial_sizes, ctm, nearest)
            if not scales:
                raise Unsupported("Resize without scales or sizes")
            return n.call(_resize_nearest, x, list(scales[2:]), None, ctm, nearest)
        align = None
    elif mode in ("linear", "bilinear", "trilinear"):
        torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial]
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            align = False
        elif ctm == "align_corners":
            align = True
        else:
            raise Unsupported(f"linear Resize with {ctm} coordinates")
    elif mode == "cubic":
        if spatial != 2 or abs(n.attr("cubic_coeff_a", -0.75) + 0.75) > 1e-6:
            raise Unsupported("cubic Resize other than 2-D with coefficient -0.75")
        torch_mode = "bicubic"
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            align = False
        elif ctm == "align_corners":
            align = True
        else:
            raise Unsupported(f"cubic Resize with {ctm} coordinates")
    else:
        raise Unsupported(f"Resize mode {mode!r}")
    kwargs: dict[str, Any] = {"mode": torch_mode}
    if align is not None:
        kwargs["align_corners"] = align
    if sizes is not None:
        size = (
            sizes[2:]
            if isinstance(sizes, list)
            else n.call(operator.getitem, sizes, slice(2, None))
        )
        return n.call(F.interpolate, x, size=size, **kwargs)
    if not scales:
        raise Unsupported("Resize without scales or sizes")
    return n.call(F.interpolate, x, scale_factor=list(scales[2:]), **kwargs)


@lowering("If")
def _if(n: Node):
    from .onnx_convert import OnnxIf, convert_branch, inline_branch

    cond = n.inputs[0]
    then_g, else_g = n.attrs["then_branch"], n.attrs["else_branch"]
    where = f"{{}} of If {n.name()!r} in {n.g.where}"
    if isinstance(cond, torch.Tensor):
        taken = bool(cond.reshape(-1)[0])
        branch = then_g if taken else else_g
        return inline_branch(n, branch, where.format("then_branch" if taken else "else_branch"))
    then_m, then_names, then_torch = convert_branch(n, then_g, where.format("then_branch"))
    else_m, else_names, else_torch = convert_branch(n, else_g, where.format("else_branch"))
    names = list(dict.fromkeys([*then_names, *else_names]))
    module = OnnxIf(
        then_m, else_m, [names.index(x) for x in then_names], [names.index(x) for x in else_names]
    )
    args = [n.g.get(name) for name in names]
    args = [n.g.attr(a, name) if isinstance(a, torch.Tensor) else a for a, name in zip(args, names)]
    out = n.module(module, cond, *args)
    path = out.node.target
    for branch, torch_names in (("then_branch", then_torch), ("else_branch", else_torch)):
        for key, onnx_name in torch_names.items():
            n.g.root.names[f"{path}.{branch}.{key}"] = onnx_name
    outputs = len(n.node.output)
    return [n.call(operator.getitem, out, i) for i in range(outputs)]


# -- recurrent layers --------------------------------------------------------------------------


def _recurrent(n: Node, kind: str):
    W, R = n.const(1), n.const(2)
    B = n.const(3) if n.has(3) else None
    if W is None or R is None or (n.has(3) and B is None):
        which = [
            name for i, name in ((1, "W"), (2, "R"), (3, "B")) if n.has(i) and n.const(i) is None
        ]
        raise Unsupported(
            f"{kind} {', '.join(which)} must be known at import time (a weight computed from "
            "the inputs cannot become a torch recurrent layer)"
        )
    if n.has(4):
        _check_full_lengths(n, kind)
    if kind == "LSTM" and n.has(7) and n.const(7) is not None and bool(n.const(7).any()):
        raise Unsupported("LSTM peepholes (torch's LSTM has none)")
    if n.attr("clip") is not None or n.attr("input_forget", 0):
        raise Unsupported(f"{kind} with clip or input_forget")
    acts = n.attr("activations")
    default = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}[kind]
    if acts and [a.lower() for a in acts] != [a.lower() for a in default] * (
        len(acts) // len(default)
    ):
        raise Unsupported(f"{kind} activations {acts}")
    if kind == "GRU" and not n.attr("linear_before_reset", 0):
        raise Unsupported("GRU with linear_before_reset=0 (torch's GRU applies the reset after)")
    layout = n.attr("layout", 0)
    direction = n.attr("direction", "forward")
    if direction == "reverse":
        raise Unsupported(f"{kind} with direction=reverse")
    hidden = n.attr("hidden_size") or R.shape[-1]
    dirs, gates = W.shape[0], W.shape[1] // hidden
    # ONNX gate order -> torch's: LSTM iofc -> ifco (i, f, g, o); GRU zrh -> rzh
    order = [0, 2, 3, 1] if kind == "LSTM" else [1, 0, 2]

    def reorder(t):
        chunks = t.reshape(t.shape[0], gates, hidden, *t.shape[2:])
        return chunks[:, order].reshape(t.shape)

    cls = torch.nn.LSTM if kind == "LSTM" else torch.nn.GRU
    layer = cls(  # no B in the file: no bias (not a zero bias that would train)
        W.shape[2],
        hidden,
        bias=B is not None,
        batch_first=bool(layout),
        bidirectional=dirs == 2,
        dtype=W.dtype,
    )
    Wr, Rr = reorder(W), reorder(R)
    frozen: set[str] = set()
    with torch.no_grad():
        for d in range(dirs):
            sfx = "_l0" + ("_reverse" if d == 1 else "")
            getattr(layer, "weight_ih" + sfx).copy_(Wr[d])
            getattr(layer, "weight_hh" + sfx).copy_(Rr[d])
            if B is not None:
                getattr(layer, "bias_ih" + sfx).copy_(reorder(B[:, : gates * hidden])[d])
                getattr(layer, "bias_hh" + sfx).copy_(reorder(B[:, gates * hidden :])[d])
            for i, kinds in ((1, ("weight_ih",)), (2, ("weight_hh",)), (3, ("bias_ih", "bias_hh"))):
                if n.has(i) and not n.conv.trainable(n.node.input[i], n.inputs[i]):
                    frozen.update(kind + sfx for kind in kinds)
    if frozen:  # NOTE [trainable weights]
        from .onnx_convert import freeze

        freeze(layer, frozen)
    (x,) = n.tensors(0)
    h0 = n.runtime(5) if n.has(5) else None
    c0 = n.runtime(6) if kind == "LSTM" and n.has(6) else None
    if layout:  # batch-first states are [batch, dirs, hidden]; torch wants [dirs, batch, hidden]
        h0 = n.call(torch.transpose, h0, 0, 1) if h0 is not None else None
        c0 = n.call(torch.transpose, c0, 0, 1) if c0 is not None else None
    module = _Recurrent(layer, kind, dirs, hidden, bool(layout))
    out = n.module(module, x, h0, c0)
    results = [n.call(operator.getitem, out, i) for i in range(3 if kind == "LSTM" else 2)]
    return results[: len(n.node.output)]


def _check_full_lengths(n: Node, kind: str) -> None:
    """``sequence_lens`` is taken only when every sequence runs the whole input: torch's
    layers (and onnx2pytorch's) run every batch element to the end, so shorter lengths
    (a padded batch) would silently give other outputs."""
    lens = n.const(4)
    if lens is None:
        n.refuse(
            f"{kind} sequence_lens given at run time (padded batches): torch's {kind} runs "
            "every sequence to the end; re-export without sequence_lens, or pack the "
            "padded batch in torch"
        )
    x = n.inputs[0]
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else n.g.shape(n.node.input[0])
    axis = 1 if n.attr("layout", 0) else 0
    length = shape[axis] if shape is not None and len(shape) == 3 else None
    if not isinstance(length, int) or length <= 0:
        n.refuse(
            f"{kind} sequence_lens {lens.reshape(-1).tolist()} on an input whose sequence "
            "length is not fixed in the graph: whether every sequence runs to the end cannot "
            "be known at import. Re-export without sequence_lens, or with a fixed length"
        )
    if bool((lens.reshape(-1) != length).any()):
        n.refuse(
            f"{kind} sequence_lens {lens.reshape(-1).tolist()} shorter than the sequence "
            f"length {length} (a padded batch): torch's {kind} runs every sequence to the "
            "end; re-export without sequence_lens, or pack the padded batch in torch"
        )


class _Recurrent(torch.nn.Module):
    """A torch LSTM/GRU with ONNX's input and output layout (Y: [seq, dirs, batch, hidden])."""

    def __init__(self, layer, kind: str, dirs: int, hidden: int, batch_first: bool):
        super().__init__()
        self.layer = layer
        self.kind, self.dirs, self.hidden, self.batch_first = kind, dirs, hidden, batch_first

    def forward(self, x, h0=None, c0=None):
        if self.kind == "LSTM":
            state = None
            if h0 is not None or c0 is not None:
                batch = x.shape[0 if self.batch_first else 1]
                zeros = x.new_zeros(self.dirs, batch, self.hidden)
                state = (h0 if h0 is not None else zeros, c0 if c0 is not None else zeros)
            y, (h, c) = self.layer(x, state)
        else:
            y, h = self.layer(x, h0)
            c = None
        if self.batch_first:  # [batch, seq, dirs*hidden] -> [batch, seq, dirs, hidden]
            y = y.reshape(y.shape[0], y.shape[1], self.dirs, self.hidden)
            h = h.transpose(0, 1)
            c = c.transpose(0, 1) if c is not None else None
        else:  # [seq, batch, dirs*hidden] -> [seq, dirs, batch, hidden]
            y = y.reshape(y.shape[0], y.shape[1], self.dirs, self.hidden).transpose(1, 2)
        return (y, h, c) if self.kind == "LSTM" else (y, h)


LOWERINGS["LSTM"] = lambda n: _recurrent(n, "LSTM")
LOWERINGS["GRU"] = lambda n: _recurrent(n, "GRU")


@lowering("NonZero")
def _nonzero(n: Node):
    (x,) = n.tensors(0)
    return n.call(torch.t, n.call(torch.nonzero, x))


@lowering("Trilu")
def _trilu(n: Node):
    (x,) = n.tensors(0)
    k = n.ints(1)[0] if n.has(1) else 0
    return n.call(torch.triu if n.attr("upper", 1) else torch.tril, x, k)


@lowering("IsInf")
def _isinf(n: Node):
    (x,) = n.tensors(0)
    pos, neg = n.attr("detect_positive", 1), n.attr("detect_negative", 1)
    if pos and neg:
        return n.call(torch.isinf, x)
    return n.call(torch.isposinf if pos else torch.isneginf, x)
