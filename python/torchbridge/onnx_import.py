"""ONNX import: an ``.onnx`` file becomes a trainable ``torch.nn.Module``.

``import_onnx`` reads the file with ``onnx`` (an opset below :data:`MIN_OPSET`
upgraded with ``onnx.version_converter``), refuses operators it cannot convert
before converting, normalises the graph with onnxslim (NOTE [onnx
normalisation]), lowers it to a ``torch.fx`` module (NOTE [onnx to fx]), makes
the constants in weight slots trainable parameters (NOTE [trainable weights]
in onnx_convert), and, with ``verify=True``,
runs the original file in onnxruntime against the module on the caller's
inputs and on random ones.

NOTE [onnx converter]
The converter is our own lowering to torch.fx (onnx_convert, onnx_ops): the
generated forward is the torch code a person would write, so the module runs
and trains at torch's speed. onnx2pytorch (its previous role: the whole
converter) ran the graph in Python on every call (1.36x a resnet18's training
step); onnx2torch, which also produces fx, lacks If, LSTM and newer opsets and
differed from onnxruntime on PaddleOCR's files (docs/onnx-import.md has the
measurements). onnx2pytorch still converts single nodes whose operator has no
lowering.

NOTE [inference graphs]
An ONNX graph is an inference graph: BatchNormalization uses its running
statistics and Dropout is the identity. The imported module keeps it so in
``train()`` mode too, unless ``import_onnx(..., batchnorm="train")``, which
lets BatchNormalization follow the module's mode like ``torch.nn.BatchNorm2d``
(batch statistics in training, running statistics updated). Dropout stays off
either way: the graph no longer says where a ratio would be trained.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import numbers
import os
import re
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import OnnxArgumentError, OnnxImportError, OnnxVerificationError
from .export import TensorInfo
from .onnx_normalise import DEFAULT_DOMAINS

__all__ = [
    "MAX_TENSOR_BYTES",
    "MIN_OPSET",
    "OnnxImportReport",
    "OnnxModule",
    "import_onnx",
    "supported_operators",
]

#: Graphs whose default-domain opset is below this are upgraded to :data:`UPGRADE_TO`.
MIN_OPSET = 7
UPGRADE_TO = 13

#: The default of ``import_onnx(max_tensor_bytes=...)``: the largest tensor the import
#: makes itself (a folded constant, one batch of verification inputs). 2 GiB is what
#: protobuf lets one ``.onnx`` file hold; a graph asking for more is refused before
#: anything is allocated.
MAX_TENSOR_BYTES = 2 * 1024**3

_VERIFY_BATCH_SIZES = (1, 3)
_INSTALL_HINT = "pip install 'torchbridge[onnx]'"


@dataclass(frozen=True)
class OnnxImportReport:
    """What ``import_onnx`` read and how it was checked (``module.import_report``).

    Attributes:
        path: The ``.onnx`` file.
        opset: The default-domain opset of the file.
        converted_opset: The opset the graph was converted at (differs from
            ``opset`` when ``onnx.version_converter`` upgraded it).
        operators: ``{"Conv": 3, ...}``: the operators of the graph (subgraphs
            included) and how often each occurs.
        inputs, outputs: ``TensorInfo(name, shape, dtype)``; a dynamic dimension
            is its symbol (``"batch"``), or ``"?"`` when it has none.
        parameters: Number of trainable values.
        trainable: The rule that chose the parameters: ``"weights"``, ``"all"``,
            ``"none"``, ``"names"`` (a set) or ``"callable"``.
        parameter_names: The torch names of the parameters (``module.named_parameters()``).
        buffer_names: The torch names of the other ``state_dict`` entries: constants kept
            as buffers (a normalisation's mean, a positional table) and statistics.
        max_abs_diff: The largest |onnxruntime - torch| over every output and
            batch size checked; ``None`` when not verified.
        tolerance: The limit applied (see ``import_onnx``).
        batch_sizes_checked: e.g. ``(1, 3)``: the random batches checked; empty when
            none were.
        inputs_checked: How many of the caller's batches (``inputs=``) were checked.
        verified_with: ``"onnxruntime <version>"``, or ``None``.
        converter: What lowered the graph (and onnx2pytorch, for the operators
            listed in ``fallbacks``).
        normaliser: The tool that normalised the graph (``"onnxslim <version>"``).
        folded: ``{op: count}`` of nodes computed at import time (constants,
            ``Identity`` chains, ``If`` with a constant condition, shape arithmetic).
        fallbacks: ``{op: count}`` of nodes converted by onnx2pytorch's modules.
        seconds: Wall time of the import.
        names: ``{torch name: ONNX name}`` for each parameter, buffer and submodule
            made from the graph, e.g. ``{"graph.conv_out": "conv.out"}``: ONNX
            names may hold characters (``/``, ``:``) that ``state_dict`` keys cannot.
    """

    path: Path
    opset: int
    converted_opset: int
    operators: dict[str, int]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    parameters: int = 0
    trainable: str = "weights"
    parameter_names: tuple[str, ...] = ()
    buffer_names: tuple[str, ...] = ()
    max_abs_diff: float | None = None
    tolerance: float | None = None
    batch_sizes_checked: tuple[int, ...] = ()
    inputs_checked: int = 0
    verified_with: str | None = None
    converter: str = ""
    normaliser: str = ""
    folded: dict[str, int] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    names: dict[str, str] = field(default_factory=dict, repr=False)
    warnings: tuple[str, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """to_dict() -> dict: a JSON-ready copy (paths as strings)."""
        return {
            "path": str(self.path),
            "opset": self.opset,
            "converted_opset": self.converted_opset,
            "operators": dict(self.operators),
            "inputs": [_info_dict(i) for i in self.inputs],
            "outputs": [_info_dict(o) for o in self.outputs],
            "parameters": self.parameters,
            "trainable": self.trainable,
            "parameter_names": list(self.parameter_names),
            "buffer_names": list(self.buffer_names),
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "batch_sizes_checked": list(self.batch_sizes_checked),
            "inputs_checked": self.inputs_checked,
            "verified_with": self.verified_with,
            "converter": self.converter,
            "normaliser": self.normaliser,
            "folded": dict(self.folded),
            "fallbacks": dict(self.fallbacks),
            "seconds": self.seconds,
            "names": dict(self.names),
        }


def _info_dict(info: TensorInfo) -> dict[str, Any]:
    return {"name": info.name, "shape": list(info.shape), "dtype": info.dtype}


# -- the module ---------------------------------------------------------------------


class OnnxModule(torch.nn.Module):
    """OnnxModule: an imported ONNX graph as a torch module.

    ``forward(input_0, input_1, ...)`` takes the graph's inputs in graph order
    (``input_names`` holds their ONNX names) and returns the one output as a
    tensor, or several as a dict ``{output name: tensor}`` in graph order.
    ``graph`` is the generated ``torch.fx.GraphModule`` (``graph.code`` shows its
    forward); ``import_report`` says what was imported. Instances are of a
    subclass per number of inputs (``OnnxModule1``, ``OnnxModule2`` ...), whose
    ``forward`` names each input, so that ``torch.export`` and
    :func:`~torchbridge.export_onnx` take it.

    BatchNormalization stays in inference mode when the module trains unless
    it was imported with ``batchnorm="train"`` (NOTE [inference graphs]).
    """

    # NOTE [re-exporting imported graphs]
    # A graph that computes shapes at run time (Shape -> Gather -> Concat -> Reshape,
    # as exports of ViTs and detectors do) reads those shapes as numbers, which
    # torch.export cannot trace. export_onnx exports an OnnxModule with torch's
    # tracing exporter instead, and verifies the file as for any module; the run-time
    # Shape and Reshape are written so that tracing records them as ONNX Shape and
    # Reshape (torch._shape_as_tensor, torch._reshape_from_tensor). Other shape
    # inputs computed at run time (Expand, ConstantOfShape, Slice bounds) are traced
    # as constants, which export_onnx's verification at a second batch size catches.
    onnx_export_by_tracing = True

    def __init__(
        self,
        graph: torch.nn.Module,
        input_names: Sequence[str],
        output_names: Sequence[str],
        *,
        batchnorm: str = "inference",
    ):
        super().__init__()
        self.graph = graph
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.batchnorm = batchnorm
        self.import_report: OnnxImportReport | None = None
        self.train(False)

    def _run(self, inputs: Sequence[torch.Tensor]):
        out = self.graph(*inputs)
        if len(self.output_names) == 1:
            return out[0] if isinstance(out, (list, tuple)) else out
        return dict(zip(self.output_names, out))

    def train(self, mode: bool = True) -> OnnxModule:
        super().train(mode)
        if self.batchnorm != "train":  # NOTE [inference graphs]
            for module in self.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.train(False)
        return self


_ARITY_CLASSES: dict[int, type] = {}


def _module_class(arity: int) -> type:
    """The OnnxModule subclass whose forward takes ``arity`` named inputs."""
    if arity not in _ARITY_CLASSES:
        names = ", ".join(f"input_{i}" for i in range(arity))
        namespace: dict[str, Any] = {}
        exec(  # a real signature: torch.export maps dynamic shapes onto its parameters
            f"def forward(self, {names}):\n    return self._run(({names}{',' if arity else ''}))\n",
            namespace,
        )
        forward = namespace["forward"]
        forward.__doc__ = f"forward({names}) -> tensor, or dict of the graph's outputs by name"
        name = f"OnnxModule{arity}"
        cls = type(name, (OnnxModule,), {"forward": forward, "__module__": __name__})
        cls.__qualname__ = name
        _ARITY_CLASSES[arity] = cls
        globals()[name] = cls  # so that pickle finds it
    return _ARITY_CLASSES[arity]


def __getattr__(name: str) -> Any:
    if name.startswith("OnnxModule") and name[len("OnnxModule") :].isdigit():
        return _module_class(int(name[len("OnnxModule") :]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- reading and normalising the file ---------------------------------------------------


def _require_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise OnnxImportError(f"import_onnx needs the onnx package: {_INSTALL_HINT}") from exc
    return onnx


def _converter():
    try:
        import onnx2pytorch
        from onnx2pytorch import ConvertModel
    except ImportError as exc:
        raise OnnxImportError(
            f"import_onnx needs the onnx2pytorch converter (Python 3.11 or newer): {_INSTALL_HINT}"
        ) from exc
    version = getattr(onnx2pytorch, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("onnx2pytorch")
    return ConvertModel, f"onnx2pytorch {version}"


_SUPPORTED: frozenset[str] | None = None


def supported_operators() -> frozenset[str]:
    """supported_operators() -> frozenset[str]: the ``ai.onnx`` operators ``import_onnx`` converts.

    Those lowered to torch calls (:func:`torchbridge.onnx_convert.lowered_operators`)
    and those of onnx2pytorch's operator table (its ``convert_operations``),
    whose module converts the node when no lowering exists. An operator
    outside both would be guessed as ``torch.<name>`` by onnx2pytorch,
    attributes ignored, so ``import_onnx`` refuses it instead.
    """
    global _SUPPORTED
    if _SUPPORTED is None:
        from .onnx_convert import lowered_operators

        names = set(lowered_operators())
        with contextlib.suppress(OnnxImportError):
            _converter()
            from onnx2pytorch.convert import operations

            source = inspect.getsource(operations.convert_operations)
            names.update(re.findall(r'node\.op_type == "(\w+)"', source))
            for group in re.findall(r"node\.op_type in \(([^)]*)\)", source):
                names.update(re.findall(r'"(\w+)"', group))
            names -= {"Loop", "Scan", "SequenceMap"}  # NOTE [onnx to fx]: not converted
        _SUPPORTED = frozenset(names)
    return _SUPPORTED


def _load(path: Path):
    """The ModelProto of ``path``, external data included, or OnnxImportError."""
    onnx = _require_onnx()
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise OnnxImportError(f"import_onnx: no file at {path}.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise OnnxImportError(
            f"import_onnx: {path} is not an ONNX model (protobuf could not parse it: {exc}). "
            "A truncated download or a file of another format gives this."
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise OnnxImportError(
            f"import_onnx: {path} is not an ONNX model: it holds no graph. A file of "
            "another format, or an empty or truncated one, gives this."
        )
    locations = _external_locations(model, path)
    missing = sorted({loc for loc in locations.values() if not (path.parent / loc).is_file()})
    if missing:
        raise OnnxImportError(
            f"import_onnx: {path} keeps its weights in external data files that are not "
            f"there: {', '.join(str(path.parent / m) for m in missing)}. Put them next to "
            "the .onnx file, under the names the file gives."
        )
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise OnnxImportError(
            f"import_onnx: the external data of {path} cannot be read: {exc}"
        ) from exc
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise OnnxImportError(
            f"import_onnx: {path} is not a valid ONNX model (onnx.checker: "
            f"{str(exc).splitlines()[0]}). A truncated file gives this."
        ) from exc
    return model


def _external_locations(model, path: Path) -> dict[str, str]:
    """``{tensor name: location}`` of the external data, each checked to lie in ``path``'s folder.

    Read from the names alone: a location outside the folder is refused without
    looking at whether it exists (a file must not make the import probe other paths).
    """
    onnx = _require_onnx()
    out: dict[str, str] = {}
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        normal = os.path.normpath(location) if location else ""
        if (
            not normal
            or os.path.isabs(location)
            or Path(location).drive
            or normal == ".."
            or normal.startswith(".." + os.sep)
            or normal.startswith("../")
        ):
            raise OnnxImportError(
                f"import_onnx: {path} keeps tensor {tensor.name!r} in external data at "
                f"{location!r}, which is not a file inside {path.parent}. External data must "
                "lie next to the .onnx file (or in a folder below it), named relative to it; "
                "move the data there and save the model with that relative location."
            )
        out[tensor.name] = location
    return out


def _all_tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.t.ByteSize():
                yield attr.t
            for sub in (attr.g, *attr.graphs):
                if sub.ByteSize():
                    yield from _all_tensors(sub)


def _nodes(graph):
    """Every node of the graph and of its subgraphs (If, Loop, Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in (attr.g, *attr.graphs):
                if sub.ByteSize():
                    yield from _nodes(sub)


def _nodes_where(graph, where: str):
    """(node, where) for every node of the graph and its subgraphs, ``where`` naming the graph."""
    for node in graph.node:
        yield node, where
        for attr in node.attribute:
            for sub in (attr.g, *attr.graphs):
                if sub.ByteSize():
                    label = node.name or node.output[0]
                    yield from _nodes_where(
                        sub, f"{attr.name} of {node.op_type} {label!r} in {where}"
                    )


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)


def _upgrade(model, path: Path):
    """Upgrade a graph below MIN_OPSET with onnx.version_converter."""
    onnx = _require_onnx()
    opset = _opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise OnnxImportError(
            f"import_onnx: {path} uses opset {opset}, newer than the installed onnx knows "
            f"({newest}). Upgrade onnx: pip install -U onnx onnxruntime."
        )
    if opset >= MIN_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, UPGRADE_TO)
    except Exception as exc:
        raise OnnxImportError(
            f"import_onnx: {path} uses opset {opset}; the converter needs {MIN_OPSET} or newer, "
            f"and onnx.version_converter could not upgrade it: {str(exc).splitlines()[0]}"
        ) from exc


def _check_operators(model, path: Path) -> dict[str, int]:
    """Count the operators; refuse any the converter lacks, naming domain and opset."""
    supported = supported_operators()
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    counts: collections.Counter[str] = collections.Counter()
    lacking: dict[str, str] = {}
    for node, where in _nodes_where(model.graph, "the main graph"):
        domain = node.domain or "ai.onnx"
        key = node.op_type if domain == "ai.onnx" else f"{domain}.{node.op_type}"
        counts[key] += 1
        if domain != "ai.onnx" or node.op_type not in supported:
            lacking[key] = (
                f"{node.op_type} (domain {domain}, opset {opsets.get(domain, '?')}, "
                f"first node {node.name or node.output[0]!r} in {where})"
            )
    if lacking:
        raise OnnxImportError(
            f"import_onnx: {path} uses operators that import_onnx cannot convert: "
            f"{'; '.join(lacking[k] for k in sorted(lacking))}. Re-export the model without "
            "them (for onnxruntime-specific fused operators: export without optimisation).",
            sorted(lacking),
        )
    return dict(sorted(counts.items()))


def _check_size(shape: Sequence[int], dtype, max_bytes: int, what: str) -> None:
    """Refuse, before allocating, a tensor of ``shape`` above ``max_bytes`` (or ill-shaped)."""
    import numpy as np

    if any(d < 0 for d in shape):
        raise OnnxImportError(f"import_onnx: {what} has a negative dimension: {list(shape)}.")
    size = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    if size > max_bytes:
        raise OnnxImportError(
            f"import_onnx: {what} would be a tensor of shape {list(shape)} "
            f"({_gib(size)}), above max_tensor_bytes={max_bytes} ({_gib(max_bytes)}). "
            "Nothing was allocated. Raise max_tensor_bytes if the graph really needs it, "
            "or check the file: a corrupt or hostile shape gives this."
        )


def _gib(n: int) -> str:
    return f"{n / 1024**3:.3g} GiB" if n >= 1024**3 else f"{n / 1024**2:.3g} MiB"


def _settle_parameters(
    module: OnnxModule,
    inputs: Sequence[TensorInfo],
    shapes: Mapping[str, Sequence[int]],
    max_bytes: int,
    promoted: set[int],
    caller_batches: Sequence[Sequence[torch.Tensor]] = (),
) -> None:
    """Weights made parameters that no output depends on differentiably become buffers.

    A floating-point constant the graph reads at run time becomes a parameter
    (NOTE [onnx to fx]); one used only through a comparison, a cast to integers
    or a shape read gets no gradient. One forward and backward (the caller's
    first batch, else random inputs at batch size 2) tells which. Without
    inputs of known shape, all stay parameters.
    """
    from .onnx_convert import OnnxIf

    # a branch not taken by this one batch gets no gradient, yet trains on other inputs
    branch = {id(p) for m in module.modules() if isinstance(m, OnnxIf) for p in m.parameters()}
    graph = module.graph
    for node in graph.graph.nodes if hasattr(graph, "graph") else ():
        if node.op == "get_attr" and any(
            u.op == "call_module" and isinstance(graph.get_submodule(u.target), OnnxIf)
            for u in node.users
        ):
            branch.add(
                id(
                    getattr(
                        graph.get_submodule(node.target.rpartition(".")[0]),
                        node.target.rpartition(".")[2],
                    )
                )
            )
    named = [
        (name, p)
        for name, p in module.named_parameters()
        if id(p) in promoted and id(p) not in branch
    ]
    if not named:
        return
    try:
        if caller_batches:
            xs = list(caller_batches[0])
        else:
            xs = _sample_inputs(inputs, 2, shapes, torch.Generator().manual_seed(0), max_bytes)
        out = module(*xs)
        flat = [out] if isinstance(out, torch.Tensor) else list(out.values())
        total = sum(o.float().sum() for o in flat if o.requires_grad)
        if not isinstance(total, torch.Tensor):
            return
        total.backward()
        unused = [name for name, p in named if p.grad is None]
    except Exception:  # the verification (or the caller's first step) reports it
        return
    finally:
        for p in module.parameters():
            p.grad = None
    for name in unused:  # persistent: state_dict keys do not depend on this pass
        owner_path, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_path)
        p = getattr(owner, leaf)
        delattr(owner, leaf)
        owner.register_buffer(leaf, p.detach())


# -- verification ----------------------------------------------------------------------------


def _sample_inputs(
    infos: Sequence[TensorInfo],
    batch: int | None,
    shapes: Mapping[str, Sequence[int]],
    gen,
    max_bytes: int = MAX_TENSOR_BYTES,
) -> list[torch.Tensor]:
    import numpy as np

    planned = [(info, _sample_shape(info, batch, shapes)) for info in infos]
    total = sum(
        int(np.prod(dims, dtype=object)) * np.dtype(info.dtype).itemsize
        for info, dims in planned
        if _kind(info.dtype) in "fbiu"
    )
    if total > max_bytes:
        shown = ", ".join(f"{info.name} {list(dims)}" for info, dims in planned)
        label = f"batch size {batch}" if batch is not None else "the declared shapes"
        raise OnnxImportError(
            f"import_onnx: the inputs to verify at {label} ({shown}) would take "
            f"{_gib(total)}, above max_tensor_bytes={max_bytes} ({_gib(max_bytes)}). Nothing "
            "was allocated. Pass smaller input_shapes=, raise max_tensor_bytes, or verify=False."
        )
    out = []
    for info, dims in planned:
        dtype = np.dtype(info.dtype)
        if dtype.kind == "f":
            tensor = torch.randn(dims, generator=gen, dtype=torch.float64)
            out.append(tensor.to(torch.from_numpy(np.zeros(0, dtype)).dtype))
        elif dtype.kind == "b":
            out.append(torch.randint(0, 2, dims, generator=gen).bool())
        elif dtype.kind in "iu":
            # small ids: valid for embeddings, one-hot encodings and indices alike
            tensor = torch.randint(0, 2, dims, generator=gen)
            out.append(tensor.to(torch.from_numpy(np.zeros(0, dtype)).dtype))
        else:
            raise OnnxImportError(
                f"import_onnx: input {info.name!r} has type {info.dtype}; verification makes "
                "numeric inputs only. Pass verify=False."
            )
    return out


def _sample_shape(
    info: TensorInfo, batch: int | None, shapes: Mapping[str, Sequence[int]]
) -> list[int]:
    """The shape of the verification input for ``info`` (a free first dimension is ``batch``)."""
    given = shapes.get(info.name)
    if given is not None:
        dims = [int(d) for d in given]
        if batch is not None and _free(info.shape[0]):
            dims = [batch, *dims[1:]] if len(dims) == len(info.shape) else [batch, *dims]
        return dims
    dims = []
    for i, d in enumerate(info.shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif i == 0 and batch is not None:
            dims.append(batch)
        else:
            raise OnnxImportError(
                f"import_onnx: input {info.name!r} has shape {list(info.shape)}: "
                f"dimension {i} is not fixed, so no input can be made to verify it. "
                f"Pass input_shapes={{{info.name!r}: (...)}} with the shape of one "
                "sample (without the batch), or verify=False."
            )
    return dims


def _kind(dtype: str) -> str:
    import numpy as np

    try:
        return np.dtype(dtype).kind
    except TypeError:
        return "O"


def _free(dim: int | str) -> bool:
    return not (isinstance(dim, int) and dim > 0)


def _verify(
    module: OnnxModule,
    path: Path,
    inputs: Sequence[TensorInfo],
    shapes: Mapping[str, Sequence[int]],
    tolerance: float,
    upgraded: bytes | None = None,
    max_bytes: int = MAX_TENSOR_BYTES,
    caller_batches: Sequence[Sequence[torch.Tensor]] = (),
    random_too: bool = True,
    normalised=None,
) -> tuple[float, tuple[int, ...], str]:
    import numpy as np
    import onnxruntime as ort

    batched = bool(inputs) and all(len(i.shape) > 0 and _free(i.shape[0]) for i in inputs)
    batches: list[Any] = [("given", i) for i in range(len(caller_batches))]
    if random_too:
        batches += list(_VERIFY_BATCH_SIZES if batched else (None,))
    note = ""
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        session = None
        first = exc
    if session is None and upgraded is not None:
        # onnxruntime runs old opsets only in part: run the graph the module was converted from
        with contextlib.suppress(Exception):
            session = ort.InferenceSession(upgraded, providers=["CPUExecutionProvider"])
            note = f" (on the graph upgraded to opset {UPGRADE_TO})"
    if session is None:
        exc = first
        raise OnnxVerificationError(
            f"import_onnx: onnxruntime cannot load {path} to verify the import "
            f"({str(exc).splitlines()[0]}). Pass verify=False to import without verifying."
        ) from first
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in batches:
        if isinstance(batch, tuple):
            xs = list(caller_batches[batch[1]])
            label = f"the caller's inputs (batch {batch[1]})"
        else:
            xs = _sample_inputs(inputs, batch, shapes, gen, max_bytes)
            label = f"batch size {batch}" if batch is not None else "the declared shapes"
        feed = {info.name: x.numpy() for info, x in zip(inputs, xs)}
        try:
            expected = session.run(None, feed)
        except Exception as exc:
            raise OnnxVerificationError(
                f"import_onnx: onnxruntime could not run {path} at {label}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        try:
            with torch.no_grad():
                out = module(*xs)
        except Exception as exc:
            where = _failing_node(module, xs)
            raise OnnxVerificationError(
                f"import_onnx: the converted module fails at {label}"
                f"{f' in {where}' if where else ''}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
        got = [out] if isinstance(out, torch.Tensor) else list(out.values())
        for name, g, e in zip(module.output_names, got, expected):
            g = g.detach().cpu().numpy()
            if not _same_dtype(g.dtype, e.dtype):
                first = _first_differing_node(module, normalised, feed, xs, tolerance)
                raise OnnxVerificationError(
                    f"import_onnx: output {name!r} has dtype {g.dtype} in torch and {e.dtype} "
                    f"in onnxruntime at {label}; " + _where_it_differs(first),
                    name,
                )
            if g.shape != e.shape:
                raise OnnxVerificationError(
                    f"import_onnx: output {name!r} has shape {tuple(g.shape)} in torch and "
                    f"{tuple(e.shape)} in onnxruntime at {label}.",
                    name,
                )
            if not g.size:
                continue
            g64, e64 = g.astype(np.float64), e.astype(np.float64)
            diff = float(np.max(np.abs(g64 - e64)))
            if not np.isfinite(diff):
                same = np.array_equal(np.isnan(g64), np.isnan(e64)) and np.allclose(
                    g64, e64, equal_nan=True
                )
                diff = 0.0 if same else float("inf")
            limit = tolerance * max(1.0, float(np.max(np.abs(e64[np.isfinite(e64)]), initial=0)))
            worst = max(worst, diff)
            if diff > limit:
                first = _first_differing_node(module, normalised, feed, xs, tolerance)
                raise OnnxVerificationError(
                    f"import_onnx: output {name!r} differs between torch and onnxruntime by up "
                    f"to {diff:.3g} at {label} (tolerance {limit:.3g}); "
                    + _where_it_differs(first),
                    name,
                )
    checked = tuple(b for b in batches if isinstance(b, int))
    return worst, checked, f"onnxruntime {ort.__version__}{note}"


#: The element types torch holds in a wider type (onnx_ops.DTYPES: torch has no arithmetic
#: on unsigned integers wider than 8 bits); every other output keeps onnxruntime's dtype.
WIDENED_DTYPES = {"uint16": ("int32", "int64"), "uint32": ("int64",), "uint64": ("int64",)}


def _same_dtype(got, expected) -> bool:
    """Whether torch's output dtype is onnxruntime's, or its documented widening."""
    return got == expected or got.name in WIDENED_DTYPES.get(expected.name, ())


def _where_it_differs(first: str | None) -> str:
    """The end of a verification error: the first differing node, when one was found."""
    if first:
        return f"the first node whose output differs is {first}."
    return "the converter translates some operator of this graph differently."


def _first_differing_node(module: OnnxModule, normalised, feed, xs, tolerance: float) -> str | None:
    """The first node of the main graph whose output differs from onnxruntime's, or None.

    Runs the normalised graph in onnxruntime with every node output exposed, and the
    module node by node; best effort (a diagnosis must not hide the mismatch).
    """
    import numpy as np
    import onnxruntime as ort
    import torch.fx as fx

    if normalised is None or not isinstance(module.graph, fx.GraphModule):
        return None
    with contextlib.suppress(Exception):
        onnx = _require_onnx()
        probe = onnx.ModelProto()
        probe.CopyFrom(normalised)
        names = [o for node in probe.graph.node for o in node.output if o]
        del probe.graph.output[:]
        probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
        session = ort.InferenceSession(
            probe.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        expected = dict(zip(names, session.run(None, feed)))
        got: dict[str, tuple[Any, str]] = {}

        class _Recorder(fx.Interpreter):
            def run_node(self, n):
                value = super().run_node(n)
                if "onnx_output" in n.meta and isinstance(value, torch.Tensor):
                    got[n.meta["onnx_output"]] = (value, n.meta.get("onnx_node", ""))
                return value

        with torch.no_grad():
            _Recorder(module.graph).run(*xs)
        for name in names:
            if name not in got:
                continue
            value, where = got[name]
            g, e = value.detach().cpu().numpy(), np.asarray(expected[name])
            if not _same_dtype(g.dtype, e.dtype):
                return f"{where} (output {name!r}: {g.dtype} in torch, {e.dtype})"
            g, e = g.astype(np.float64), e.astype(np.float64)
            if g.shape != e.shape:
                return f"{where} (output {name!r}: shape {g.shape} in torch, {e.shape})"
            if g.size and not np.allclose(g, e, rtol=tolerance, atol=tolerance, equal_nan=True):
                return f"{where} (output {name!r} by up to {np.nanmax(np.abs(g - e)):.3g})"
    return None


def _failing_node(module: OnnxModule, xs: Sequence[torch.Tensor]) -> str | None:
    """The ONNX node whose torch code raises on ``xs`` (rerun node by node), or None."""
    import torch.fx as fx

    failed: list[str] = []

    class _Finder(fx.Interpreter):
        def run_node(self, n):
            try:
                return super().run_node(n)
            except Exception:
                sub = self.module.get_submodule(n.target) if n.op == "call_module" else None
                if isinstance(sub, fx.GraphModule) or hasattr(sub, "then_branch"):
                    pass
                failed.append(n.meta.get("onnx_node", n.format_node()))
                raise

    graph = module.graph
    if not isinstance(graph, fx.GraphModule):
        return None
    with contextlib.suppress(Exception), torch.no_grad():
        _Finder(graph).run(*xs)
    return failed[0] if failed else None


# -- the entry point -------------------------------------------------------------------------


def import_onnx(
    path: str | os.PathLike[str],
    *,
    verify: bool = True,
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    tolerance: float = 1e-4,
    batchnorm: str = "inference",
    max_tensor_bytes: int = MAX_TENSOR_BYTES,
    trainable: str | Collection[str] | Callable[[str], bool] = "weights",
) -> OnnxModule:
    """import_onnx(path, *, verify=True, inputs=None, input_shapes=None, tolerance=1e-4,
    batchnorm="inference", max_tensor_bytes=MAX_TENSOR_BYTES, trainable="weights") -> OnnxModule

    Import the ONNX file ``path`` as a trainable torch module.

    Args:
        path: An ``.onnx`` file; external data files are read from its folder.
        verify: Run the file in onnxruntime and the module in torch on the same
            inputs and compare every output: the caller's ``inputs``, and random
            ones (batch sizes 1 and 3 when every input has a free first
            dimension) unless ``inputs`` is given without ``input_shapes``.
        inputs: ``{input name: array}``, or a list of them (one per batch), to
            verify on, e.g. ``{"x": audio, "sr": np.array(16000)}`` for a model
            whose inputs must hold particular values. Arrays have the graph's
            dtypes; the first batch also settles which weights are trainable.
        input_shapes: ``{input name: shape}`` for inputs whose non-batch
            dimensions are not fixed in the file, e.g. ``{"x": (3, 48, 192)}``
            (one sample; a leading batch is replaced).
        tolerance: The largest accepted |onnxruntime - torch|, scaled by the
            output's largest magnitude when that exceeds 1.
        batchnorm: ``"inference"`` keeps BatchNormalization on its running
            statistics in training too (as the graph says); ``"train"`` makes it
            behave like ``torch.nn.BatchNorm2d``.
        max_tensor_bytes: The largest tensor the import makes itself: a folded
            constant (``ConstantOfShape``, ``Expand``, ``Tile``), or one batch of
            verification inputs.
            A graph that asks for more is refused before anything is allocated.
        trainable: Which floating-point constants become parameters (NOTE
            [trainable weights] in onnx_convert). ``"weights"``: those an operator
            reads as a weight or bias (Conv, Gemm, MatMul's constant operand,
            normalisation scale and bias, LSTM/GRU weights, embeddings, PRelu);
            ``"all"``: every floating-point constant of more than one value;
            ``"none"``: none; a set of ONNX names, or a callable ``name -> bool``:
            those. The others are buffers, in ``state_dict`` all the same.

    Returns:
        An :class:`OnnxModule` whose weights (as ``trainable`` says) are
        parameters, with ``module.import_report`` (:class:`OnnxImportReport`,
        which lists the parameters and the buffers).

    Raises:
        OnnxImportError: the file is missing, not ONNX, truncated, lacks its
            external data (or keeps it outside its folder), asks for a tensor
            above ``max_tensor_bytes``, or has a node that cannot be converted:
            the error names the operator, its domain and opset, the node and
            its subgraph (``err.operators``, ``err.node``, ``err.subgraph``).
        OnnxVerificationError: an output differs from onnxruntime's
            (``err.output`` names it).
        OnnxArgumentError: a keyword has a wrong kind or value (also a
            ``TypeError``); raised before anything is converted.

    Nothing is written to disk.
    """
    verify_inputs = inputs
    started = time.perf_counter()
    _check_arguments(batchnorm, input_shapes, tolerance, max_tensor_bytes)
    rule = _trainable_rule(trainable)
    path = Path(path).expanduser()
    model = _load(path)
    from .export import _graph_info
    from .onnx_convert import convert_graph
    from .onnx_normalise import guard_sizes, normalise, operator_counts

    _check_tensor_interface(model, path)
    opset, inputs, outputs = _graph_info(model)
    inputs = tuple(_with_question_marks(i) for i in inputs)
    outputs = tuple(_with_question_marks(o) for o in outputs)
    caller_batches = _caller_inputs(inputs, verify_inputs, path)
    converted = _upgrade(model, path)
    # onnxruntime runs some old opsets only once upgraded: kept as the file said, unfolded
    upgraded = converted.SerializeToString() if converted is not model and verify else None
    model = converted
    operators = _check_operators(model, path)
    guard_sizes(model, path, max_tensor_bytes)
    normalised, normaliser, note = normalise(model, max_tensor_bytes)
    after = operator_counts(normalised)
    folded = {
        op: n - after.get(op, 0) for op, n in operator_counts(model).items() if n > after.get(op, 0)
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = convert_graph(
            normalised, batchnorm=batchnorm, max_bytes=max_tensor_bytes, path=path, trainable=rule
        )
    _check_named(graph.trainable, path)
    for op, n in graph.folded.items():
        folded[op] = folded.get(op, 0) + n
    promoted = {id(p) for p in graph.module.parameters() if id(p) in graph.promoted}
    module = _module_class(len(inputs))(
        graph.module, [i.name for i in inputs], [o.name for o in outputs], batchnorm=batchnorm
    )
    if not graph.trainable.explicit:  # parameters the caller named stay parameters
        _settle_parameters(
            module, inputs, dict(input_shapes or {}), max_tensor_bytes, promoted, caller_batches
        )
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is not None and dtype != torch.float32:
        tolerance = max(tolerance, {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 0))
    max_diff, checked, verified_with = None, (), None
    if verify:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise OnnxImportError(
                f"import_onnx(verify=True) needs onnxruntime: {_INSTALL_HINT}, or pass "
                "verify=False."
            ) from exc
        random_too = input_shapes is not None or not caller_batches
        max_diff, checked, verified_with = _verify(
            module,
            path,
            inputs,
            dict(input_shapes or {}),
            tolerance,
            upgraded,
            max_tensor_bytes,
            caller_batches,
            random_too,
            normalised,
        )
    names = {f"graph.{k}": v for k, v in graph.names.items()}
    module.import_report = OnnxImportReport(
        path=path,
        opset=opset,
        converted_opset=_opset(model),
        operators=operators,
        inputs=inputs,
        outputs=outputs,
        parameters=sum(p.numel() for p in module.parameters()),
        trainable=rule if isinstance(rule, str) else ("callable" if callable(rule) else "names"),
        parameter_names=tuple(name for name, _ in module.named_parameters()),
        buffer_names=tuple(
            k for k in module.state_dict() if k not in dict(module.named_parameters())
        ),
        max_abs_diff=max_diff,
        tolerance=tolerance if verify else None,
        batch_sizes_checked=checked,
        inputs_checked=len(caller_batches) if verify else 0,
        verified_with=verified_with,
        converter=_converter_name(graph.fallbacks),
        normaliser=normaliser,
        folded=dict(sorted(folded.items())),
        fallbacks=dict(sorted(graph.fallbacks.items())),
        seconds=time.perf_counter() - started,
        names=names,
        warnings=tuple(
            sorted({str(w.message).splitlines()[0] for w in caught} | ({note} if note else set()))
        ),
    )
    return module


def _trainable_rule(trainable: Any) -> Any:
    """``trainable=`` checked: a rule name, a callable, or a frozenset of ONNX names."""
    if isinstance(trainable, str):
        if trainable not in ("weights", "all", "none"):
            raise OnnxArgumentError(
                "import_onnx: trainable must be 'weights', 'all', 'none', a set of ONNX "
                f"names or a callable name -> bool, got {trainable!r} (for one name, "
                f"pass {{{trainable!r}}})"
            )
        return trainable
    if callable(trainable):
        return trainable
    if isinstance(trainable, Collection) and all(isinstance(t, str) for t in trainable):
        return frozenset(trainable)
    raise OnnxArgumentError(
        "import_onnx: trainable must be 'weights', 'all', 'none', a set of ONNX names or a "
        f"callable name -> bool, got a {type(trainable).__name__}"
    )


def _check_named(rule, path: Path) -> None:
    """Refuse a set of names that are not floating-point constants the module keeps."""
    if not isinstance(rule.rule, frozenset):
        return
    unknown = sorted(rule.rule - rule.seen)
    if unknown:
        known = sorted(rule.seen)
        raise OnnxArgumentError(
            f"import_onnx: trainable= names {', '.join(map(repr, unknown))}, which "
            f"{'is' if len(unknown) == 1 else 'are'} not a floating-point constant that the "
            f"module of {path} reads (a constant folded at import has the name of the node "
            f"that made it). Its constants: {', '.join(map(repr, known[:20]))}"
            + (f" and {len(known) - 20} more" if len(known) > 20 else "")
        )


def _check_arguments(batchnorm: Any, input_shapes: Any, tolerance: Any, max_bytes: Any) -> None:
    """Refuse, before reading the file, keywords of a wrong kind (OnnxArgumentError)."""
    if batchnorm not in ("inference", "train"):
        raise OnnxArgumentError(
            f"import_onnx: batchnorm must be 'inference' or 'train', got {batchnorm!r}"
        )
    if input_shapes is not None:
        if not isinstance(input_shapes, Mapping):
            raise OnnxArgumentError(
                "import_onnx: input_shapes= takes {input name: shape of one sample}, got a "
                f"{type(input_shapes).__name__}"
            )
        for name, shape in input_shapes.items():
            if not (
                isinstance(shape, Sequence)
                and not isinstance(shape, (str, bytes))
                and all(
                    isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0
                    for d in shape
                )
            ):
                raise OnnxArgumentError(
                    f"import_onnx: input_shapes[{name!r}] must be a sequence of sizes "
                    f"(non-negative ints), got {shape!r}"
                )
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or tolerance < 0:
        raise OnnxArgumentError(
            f"import_onnx: tolerance must be a non-negative number, got {tolerance!r}"
        )
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral) or max_bytes <= 0:
        raise OnnxArgumentError(
            f"import_onnx: max_tensor_bytes must be a positive int, got {max_bytes!r}"
        )


def _converter_name(fallbacks: Mapping[str, int]) -> str:
    name = "torchbridge.onnx_convert (torch.fx)"
    if fallbacks:
        name += f"; {_converter()[1]} for {', '.join(sorted(fallbacks))}"
    return name


def _caller_inputs(infos: Sequence[TensorInfo], given: Any, path: Path) -> list[list[torch.Tensor]]:
    """The caller's verification batches (``inputs=``) as tensors in graph order, checked."""
    import numpy as np

    if given is None:
        return []
    if isinstance(given, Mapping):
        batches = [given]
    elif isinstance(given, Sequence) and not isinstance(given, (str, bytes)):
        batches = list(given)
    else:
        raise OnnxArgumentError(
            "import_onnx: inputs= takes {input name: array} or a list of them; got a "
            f"{type(given).__name__}"
        )
    out = []
    names = [i.name for i in infos]
    for k, batch in enumerate(batches):
        if not isinstance(batch, Mapping):
            raise OnnxArgumentError(
                f"import_onnx: inputs= takes {{input name: array}} or a list of them; "
                f"batch {k} is a {type(batch).__name__}"
            )
        unknown = sorted(set(batch) - set(names))
        missing = [n for n in names if n not in batch]
        if unknown or missing:
            raise OnnxImportError(
                f"import_onnx: inputs= batch {k} does not match the inputs of {path} "
                f"({', '.join(names)}): "
                + "; ".join(
                    x
                    for x in (
                        f"unknown {', '.join(unknown)}" if unknown else "",
                        f"missing {', '.join(missing)}" if missing else "",
                    )
                    if x
                )
            )
        tensors = []
        for info in infos:
            value = batch[info.name]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
            array = np.asarray(array)
            want = np.dtype(info.dtype) if _kind(info.dtype) != "O" else array.dtype
            if array.dtype != want:
                raise OnnxImportError(
                    f"import_onnx: inputs= batch {k}: {info.name!r} has dtype {array.dtype}, "
                    f"the graph declares {info.dtype}"
                )
            tensors.append(torch.from_numpy(np.ascontiguousarray(array).copy()))
        out.append(tensors)
    return out


def _with_question_marks(info: TensorInfo) -> TensorInfo:
    shape = tuple("?" if d == 0 or (isinstance(d, int) and d < 0) else d for d in info.shape)
    return TensorInfo(info.name, shape, info.dtype)


def _check_tensor_interface(model: Any, path: Path) -> None:
    """OnnxImportError for a graph input or output that is not a tensor (a sequence, a map,
    an optional): the imported module takes and returns tensors."""
    initializers = {i.name for i in model.graph.initializer}
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            if value.name in initializers or value.type.HasField("tensor_type"):
                continue
            what = value.type.WhichOneof("value") or "untyped value"
            raise OnnxImportError(
                f"{path}: the graph {kind} {value.name!r} is a {what.removesuffix('_type')}, "
                "not a tensor. An imported module takes and returns tensors: export the "
                "model with tensor inputs and outputs (a sequence as one stacked tensor)."
            )


def input_size_of(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """input_size_of(path) -> one sample's size in torch order, or None.

    The shape of the first graph input without its batch dimension when every
    other dimension is fixed, read without loading the weights.
    """
    onnx = _require_onnx()
    with contextlib.suppress(Exception):
        model = onnx.load(str(path), load_external_data=False)
        from .export import _graph_info

        _, inputs, _ = _graph_info(model)
        if inputs:
            dims = inputs[0].shape[1:]
            if dims and all(isinstance(d, int) and d > 0 for d in dims):
                return tuple(int(d) for d in dims)
    return None
