"""Normalising an ONNX graph before it is converted (step 2 of :func:`~torchbridge.import_onnx`).

NOTE [onnx normalisation]
Exporters leave weights in many shapes: initializers (torch's dynamo exporter),
initializers routed through ``Identity`` nodes (torch's TorchScript exporter),
``Constant`` nodes reshaped or sliced (Silero's LSTMs, PaddlePaddle), constants
inside ``If`` branches. onnxslim folds every constant subexpression into an
initializer, removes ``Identity`` chains and dead nodes, in subgraphs too, and
runs onnx's shape inference, so the converter sees weights as initializers
whatever the exporter did. Its fusions (Conv+BatchNorm, MatMul+Add -> Gemm,
GELU) are skipped: they change which weights exist, and a trainable
BatchNormalization must stay one. The converter folds what is left (an ``If``
whose condition became constant, shape arithmetic) while it lowers the graph.

onnxslim was measured against the alternatives on the files in
docs/onnx-import.md ("Normalisation"); it is pure Python, keeps standard
operators, and folds inside subgraphs. Its folding evaluates nodes with
onnxruntime, so :func:`guard_sizes` first refuses constants the file asks to
be absurdly large, before anything computes them.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
from pathlib import Path

from .errors import OnnxImportError

__all__ = ["DEFAULT_DOMAINS", "RANDOM_OPERATORS", "guard_sizes", "normalise", "operator_counts"]

#: How a node or opset names the default (``ai.onnx``) domain.
DEFAULT_DOMAINS = ("", "ai.onnx")
#: Operators that draw at run time: never folded, never computed at import.
RANDOM_OPERATORS = frozenset(
    {
        "Bernoulli",
        "Multinomial",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
    }
)


def _graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in (attr.g, *attr.graphs):
                if sub.ByteSize():
                    yield from _graphs(sub)


def operator_counts(model) -> dict[str, int]:
    """``{op: count}`` over the graph and its subgraphs (domain-qualified when not ai.onnx)."""
    counts: collections.Counter[str] = collections.Counter()
    for graph in _graphs(model.graph):
        for node in graph.node:
            domain = node.domain or "ai.onnx"
            counts[node.op_type if domain == "ai.onnx" else f"{domain}.{node.op_type}"] += 1
    return dict(sorted(counts.items()))


def guard_sizes(model, path: Path, max_bytes: int) -> None:
    """Refuse a constant the graph would make above ``max_bytes``, before anything folds it.

    Reads the sizes from the file: ``ConstantOfShape`` of a constant shape, and
    ``Expand``/``Tile`` of constants, in every (sub)graph; then, in the main graph,
    every tensor computed from constants alone (what a normaliser folds: a
    ``Range``, a shape made by ``Concat``...) whose size onnx's shape inference
    (with data propagation) knows.
    """
    import numpy as np
    from onnx import numpy_helper

    for graph in _graphs(model.graph):
        known = {t.name: t for t in graph.initializer}
        for index, node in enumerate(graph.node):
            if node.domain not in DEFAULT_DOMAINS:
                continue
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and node.output:
                        known[node.output[0]] = attr.t
                continue
            shape = None
            itemsize = 4
            if node.op_type == "ConstantOfShape" and node.input and node.input[0] in known:
                shape = numpy_helper.to_array(known[node.input[0]]).reshape(-1).tolist()
                for attr in node.attribute:
                    if attr.name == "value":
                        itemsize = numpy_helper.to_array(attr.t).dtype.itemsize
            elif node.op_type in ("Expand", "Tile") and len(node.input) > 1:
                if node.input[0] in known and node.input[1] in known:
                    x = numpy_helper.to_array(known[node.input[0]])
                    arg = numpy_helper.to_array(known[node.input[1]]).reshape(-1).tolist()
                    itemsize = x.dtype.itemsize
                    if node.op_type == "Tile" and len(arg) == x.ndim:
                        shape = [a * b for a, b in zip(x.shape, arg)]
                    elif node.op_type == "Expand":
                        rank = max(len(arg), x.ndim)
                        xs = [1] * (rank - x.ndim) + list(x.shape)
                        ss = [1] * (rank - len(arg)) + arg
                        shape = [max(a, b) for a, b in zip(xs, ss)]
            if shape is None:
                continue
            size = int(np.prod([max(int(d), 0) for d in shape], dtype=object)) * itemsize
            if size > max_bytes:
                _refuse_constant(path, node, index, shape, size, max_bytes)
    _guard_folded_sizes(model, path, max_bytes)


def _refuse_constant(path: Path, node, index: int, shape, size: int, max_bytes: int):
    label = f"{node.name!r}" if node.name else f"#{index} (output {node.output[0]!r})"
    raise OnnxImportError(
        f"import_onnx: {path}: {node.op_type} node {label} would make a constant of "
        f"shape {[int(d) for d in shape]} ({size / 1024**3:.3g} GiB), above "
        f"max_tensor_bytes={max_bytes} ({max_bytes / 1024**3:.3g} GiB). Nothing was "
        "allocated. Raise max_tensor_bytes if the graph really needs it, or check "
        "the file: a corrupt or hostile shape gives this.",
        [node.op_type],
    )


def _guard_folded_sizes(model, path: Path, max_bytes: int) -> None:
    """The sizes of the main graph's tensors computed from constants alone, as onnx's shape
    inference (with data propagation) gives them: one above ``max_bytes`` is refused.

    Inference runs on a copy whose large initializers are graph inputs of the same type
    and shape (their values are not needed for sizes), so no weight is copied. A graph
    inference cannot read is left to the literal checks of :func:`guard_sizes`.
    """
    import numpy as np
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weights(model), data_prop=True)
    except Exception:  # noqa: BLE001 - inference is a second look, not a gate
        return
    graph = inferred.graph
    types = {v.name: v.type for v in (*graph.value_info, *graph.output)}
    constant = {t.name for t in graph.initializer} | {t.name for t in model.graph.initializer}
    for index, node in enumerate(graph.node):
        if node.domain not in DEFAULT_DOMAINS or node.op_type in RANDOM_OPERATORS:
            continue
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            continue
        if node.op_type != "Constant" and not (
            node.input and all(i == "" or i in constant for i in node.input)
        ):
            continue
        for out in node.output:
            constant.add(out)
            tensor = types[out].tensor_type if out in types else None
            if tensor is None or not tensor.HasField("shape"):
                continue
            dims = tensor.shape.dim
            if not all(d.HasField("dim_value") for d in dims):
                continue
            try:
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
            except (KeyError, TypeError, ValueError):
                continue
            shape = [int(d.dim_value) for d in dims]
            size = int(np.prod(shape, dtype=object)) * itemsize
            if size > max_bytes:
                _refuse_constant(path, node, index, shape, size, max_bytes)


def _without_weights(model):
    """A new model of ``model``'s main graph in which each initializer over 64 KiB is a
    graph input of its type and shape (for shape inference: the sizes stay, the values
    are not copied)."""
    from onnx import helper

    graph = model.graph
    small, weights = [], []
    for tensor in graph.initializer:
        if tensor.ByteSize() > (64 << 10):
            weights.append(
                helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
        else:
            small.append(tensor)
    light = helper.make_graph(
        list(graph.node),
        graph.name or "main",
        [*graph.input, *weights],
        list(graph.output),
        initializer=small,
        value_info=list(graph.value_info),
    )
    return helper.make_model(
        light, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )


def normalise(model, max_bytes: int) -> tuple[object, str, str | None]:
    """normalise(model, max_bytes) -> (normalised copy, tool, warning or None).

    The input model is left as it is. When onnxslim is missing or fails, the
    model comes back unchanged with a warning; the converter still folds
    constants as it lowers (NOTE [onnx normalisation]).
    """
    import onnx

    if model.ByteSize() > 2**31 - 2**20:
        return model, "none", "the model is too large for onnxslim to normalise in memory"
    randoms = sorted(set(operator_counts(model)) & RANDOM_OPERATORS)
    if randoms:  # onnxslim's folding would draw them once, at import
        return model, "none", f"not normalised: onnxslim would fold {', '.join(randoms)}"
    try:
        import onnxslim
        from onnxslim.core.pattern.registry import DEFAULT_FUSION_PATTERNS
    except ImportError:
        return model, "none", "onnxslim is not installed: pip install 'torchbridge[onnx]'"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    logger = logging.getLogger("onnxslim")
    level = logger.level
    try:
        logger.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            slim = onnxslim.slim(
                copy,
                skip_fusion_patterns=list(DEFAULT_FUSION_PATTERNS),
                size_threshold=max_bytes,
            )
    except Exception as exc:  # a tool's failure leaves folding to the converter
        return model, "none", f"onnxslim could not normalise the graph: {type(exc).__name__}: {exc}"
    finally:
        logger.setLevel(level)
    if slim is None:
        return model, "none", "onnxslim returned no model"
    return slim, f"onnxslim {onnxslim.__version__}", None
