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
    ``Expand``/``Tile`` of constants, in every (sub)graph.
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
                label = f"{node.name!r}" if node.name else f"#{index} (output {node.output[0]!r})"
                raise OnnxImportError(
                    f"import_onnx: {path}: {node.op_type} node {label} would make a constant of "
                    f"shape {[int(d) for d in shape]} ({size / 1024**3:.3g} GiB), above "
                    f"max_tensor_bytes={max_bytes} ({max_bytes / 1024**3:.3g} GiB). Nothing was "
                    "allocated. Raise max_tensor_bytes if the graph really needs it, or check "
                    "the file: a corrupt or hostile shape gives this.",
                    [node.op_type],
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
