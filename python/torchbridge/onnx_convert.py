"""ONNX graph -> ``torch.fx.GraphModule``: the converter behind :func:`~torchbridge.import_onnx`.

NOTE [onnx to fx]
Each ONNX node is lowered to the torch calls plain torch code would make
(``torch.conv2d``, ``x.reshape(...)``, ``torch.add``), recorded into one
``torch.fx`` graph whose generated ``forward`` is straight-line Python: no
per-node dictionary, no dispatch at run time. Lowering runs on fx proxies for
values known only at run time and on real tensors for values known at import
time, so one code path both records the graph and folds every constant
subexpression (a weight computed by ``Reshape(Constant)``, an ``If`` whose
condition is constant, shape arithmetic on fixed dimensions). Inputs that an
operator reads as numbers (a ``Reshape`` target, ``Slice`` bounds, ``Resize``
scales) become Python constants in the generated code when they are known.

A constant that reaches a run-time operator becomes an attribute of the
module: an ``nn.Parameter`` when the :class:`Trainable` rule says so (NOTE
[trainable weights]), else a buffer, persistent (in ``state_dict``) when it
is a floating-point tensor with more than one value or in a weight slot,
non-persistent otherwise (integer constants, epsilons). Names follow the
ONNX names (``layer1.0.conv1.weight`` stays a path; characters a
``state_dict`` key cannot hold become ``_``); ``names`` maps back.

NOTE [trainable weights]
An ONNX file does not say which constants were trained. Declared here instead
of guessed from sizes: a floating-point constant is a weight when an operator
reads it in a weight or bias slot (``onnx_ops.WEIGHT_SLOTS``: Conv and
ConvTranspose W and B, Gemm's constant operand and C, MatMul's and Einsum's
constant operand, the scale and bias of BatchNormalization,
InstanceNormalization, LayerNormalization and GroupNormalization, LSTM/GRU/RNN
W, R and B, Gather's data (an embedding table), PRelu's slope), or in the
same slots written out as separate operators: the constant an ``Add`` adds to
the output of Conv, ConvTranspose, Gemm, MatMul or Einsum (a bias, also past
Reshape/Squeeze/Unsqueeze/Transpose/Flatten/Slice, which only move values)
when it holds one value per feature (at most one dimension above 1: a table
added there, such as positional embeddings, is not a bias), and the constants
a ``Mul`` or ``Add`` applies to a value divided by a ``Sqrt`` (a
normalisation's scale and shift: LayerNorm below opset 17, PaddlePaddle's and
tf2onnx's layer norms). ``import_onnx(...,
trainable="weights")`` makes exactly those parameters; normalisation means,
positional tables and masks stay buffers.
``trainable="all"`` makes every floating-point constant of more than one
value (and every weight) a parameter, ``"none"`` none, and a set of ONNX
names or a callable ``name -> bool`` exactly those named.

An operator without a lowering here falls back to onnx2pytorch's module for
that one node, called from the fx graph with its inputs resolved at import
time. ``If`` with a run-time condition becomes an :class:`OnnxIf` submodule
holding one ``GraphModule`` per branch. Anything that cannot be converted is
an :class:`~torchbridge.errors.OnnxImportError` naming the node, its operator,
domain and opset, and the subgraph it is in.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch.fx.proxy import GraphAppendingTracer, Proxy

from .errors import OnnxArgumentError, OnnxImportError
from .onnx_normalise import RANDOM_OPERATORS

__all__ = [
    "ConvertedGraph",
    "OnnxIf",
    "Trainable",
    "convert_graph",
    "freeze",
    "identifier",
    "lowered_operators",
    "weight_inputs",
]


def identifier(name: str) -> str:
    """A Python identifier made from an ONNX name (``conv.out`` -> ``conv_out``)."""
    out = re.sub(r"\W", "_", name)
    return out if out and not out[0].isdigit() else f"_{out}"


def lowered_operators() -> frozenset[str]:
    """The ``ai.onnx`` operators lowered to plain torch calls (others use onnx2pytorch)."""
    from . import onnx_ops

    return frozenset(onnx_ops.LOWERINGS)


class OnnxIf(torch.nn.Module):
    """An ONNX ``If`` whose condition is known only at run time: one GraphModule per branch.

    ``forward(cond, *captured)`` runs the branch the condition picks; each branch
    takes the values of the enclosing graph it reads (``then_args`` / ``else_args``
    index into ``captured``) and returns the node's outputs as a tuple.
    """

    def __init__(self, then_branch, else_branch, then_args, else_args):
        super().__init__()
        self.then_branch = then_branch
        self.else_branch = else_branch
        self.then_args = tuple(then_args)
        self.else_args = tuple(else_args)

    def forward(self, cond, *captured):
        if bool(cond):
            return self.then_branch(*[captured[i] for i in self.then_args])
        return self.else_branch(*[captured[i] for i in self.else_args])


class Trainable:
    """Which floating-point constants become parameters (NOTE [trainable weights]).

    ``rule`` is ``"weights"``, ``"all"``, ``"none"``, a frozenset of ONNX names or a
    callable ``name -> bool``; ``slots`` what :func:`weight_inputs` found: the names
    read in a weight slot, and those added as a bias. Calling it decides for one
    constant, and records the name in ``seen`` (the names a set must come from).
    """

    def __init__(
        self,
        rule: Any = "weights",
        slots: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset()),
    ):
        self.rule = rule
        self.weights, self.biases = slots
        self.seen: set[str] = set()
        self._chosen: dict[str, bool] = {}  # the callable's answers, asked once per name

    def is_weight(self, name: str, value: torch.Tensor) -> bool:
        """Whether ``value`` is in a weight slot, or a bias of one value per feature."""
        if name in self.weights:
            return True
        return name in self.biases and sum(d > 1 for d in value.shape) <= 1

    @property
    def explicit(self) -> bool:
        """Whether the caller named the parameters (a set or a callable)."""
        return not isinstance(self.rule, str)

    def persistent(self, name: str, value: torch.Tensor) -> bool:
        """Whether ``value`` belongs in ``state_dict`` (parameter or not): a weight, or a
        floating-point tensor of more than one value, whatever the rule."""
        return value.is_floating_point() and (value.numel() > 1 or self.is_weight(name, value))

    def __call__(self, name: str, value: torch.Tensor) -> bool:
        if not value.is_floating_point():
            return False
        self.seen.add(name)
        rule = self.rule
        if rule == "weights":
            return self.is_weight(name, value)
        if rule == "all":
            return self.persistent(name, value)
        if rule == "none":
            return False
        if callable(rule):
            if name in self._chosen:
                return self._chosen[name]
            try:
                chosen = rule(name)
            except Exception as exc:
                raise OnnxArgumentError(
                    f"import_onnx: trainable= raised {type(exc).__name__} on {name!r}: {exc}"
                ) from exc
            if not isinstance(chosen, bool):
                raise OnnxArgumentError(
                    f"import_onnx: trainable= must return True or False, got {chosen!r} "
                    f"for {name!r}"
                )
            self._chosen[name] = chosen
            return chosen
        return name in rule


# operators that move or select values without computing new ones
_MOVES = frozenset({"Identity", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Flatten", "Slice"})


def weight_inputs(model) -> tuple[frozenset[str], frozenset[str]]:
    """weight_inputs(model) -> (weights, biases): the names of the values read in a weight
    slot, and of those added as a bias, in every (sub)graph (NOTE [trainable weights])."""
    from .onnx_normalise import DEFAULT_DOMAINS
    from .onnx_ops import BIAS_AFTER, WEIGHT_SLOTS

    out: set[str] = set()
    biases: set[str] = set()

    def visit(graph):
        producer = {o: node for node in graph.node for o in node.output}

        def op(name: str) -> str | None:
            """The operator that computed ``name``'s values, past ops that only move them."""
            node = producer.get(name)
            while node is not None and node.op_type in _MOVES and node.input:
                node = producer.get(node.input[0])
            return node.op_type if node is not None else None

        normalised: set[str] = set()  # values scaled by 1/sigma: a normalisation written out
        for node in graph.node:
            if node.domain in DEFAULT_DOMAINS and (
                (node.op_type == "Div" and len(node.input) > 1 and op(node.input[1]) == "Sqrt")
                or (node.op_type == "Reciprocal" and op(node.input[0]) == "Sqrt")
                or (node.op_type == "Mul" and any(i in normalised for i in node.input))
            ):
                normalised.update(node.output)
        for node in graph.node:
            if node.domain in DEFAULT_DOMAINS:
                slots = WEIGHT_SLOTS.get(node.op_type, ())
                if slots is None:  # every input
                    slots = range(len(node.input))
                out.update(node.input[i] for i in slots if i < len(node.input))
                if node.op_type == "Add" and any(op(i) in BIAS_AFTER for i in node.input):
                    biases.update(node.input)  # a bias, if it has one value per feature
                if node.op_type in ("Mul", "Add") and any(i in normalised for i in node.input):
                    out.update(node.input)  # the scale and shift of a normalisation
            for attr in node.attribute:
                for sub in (attr.g, *attr.graphs):
                    if sub.ByteSize():
                        visit(sub)

    visit(model.graph)
    return frozenset(out - {""}), frozenset(biases - {""})


def freeze(module: torch.nn.Module, names: set[str] | None = None) -> None:
    """Make the parameters of ``module`` (all, or those ``names``) persistent buffers:
    same ``state_dict`` keys and values, no gradient, not in ``parameters()``."""
    for prefix, sub in list(module.named_modules()):
        changed = False
        for leaf, p in list(sub._parameters.items()):
            full = f"{prefix}.{leaf}" if prefix else leaf
            if p is None or (names is not None and full not in names):
                continue
            del sub._parameters[leaf]
            sub.register_buffer(leaf, p.detach(), persistent=True)
            changed = True
        if changed and isinstance(sub, torch.nn.RNNBase):
            sub._init_flat_weights()  # the layer runs on the tensors it listed


@dataclass
class ConvertedGraph:
    """What :func:`convert_graph` made: the module, and the names it gave."""

    module: fx.GraphModule
    names: dict[str, str] = field(default_factory=dict)  # torch name -> ONNX name
    fallbacks: dict[str, int] = field(default_factory=dict)  # op -> count, via onnx2pytorch
    folded: dict[str, int] = field(default_factory=dict)  # op -> nodes computed at import
    promoted: set[int] = field(default_factory=set)  # id() of the weights made parameters
    trainable: Trainable = field(default_factory=Trainable)  # the rule, and the names it saw


# -- the builder ----------------------------------------------------------------------------------


_RESERVED = frozenset(dir(fx.GraphModule)) | {"graph", "code", "meta", "_graph", "_code"}


class _Root:
    """Attribute owner of one GraphModule: parameters, buffers and submodules by ONNX name."""

    def __init__(self, names: dict[str, str], promoted: set[int], trainable: Trainable):
        self.module = torch.nn.Module()
        self.names = names
        self.promoted = promoted
        self.trainable = trainable
        self.by_onnx: dict[tuple[str, int], str] = {}

    def _free_path(self, wanted: str) -> str:
        parts = [identifier(p) if not p.isdigit() else p for p in wanted.split(".") if p] or ["_"]
        if parts[0] in _RESERVED:  # GraphModule's own attributes (graph, code, forward ...)
            parts[0] = f"onnx_{parts[0]}"
        path = ".".join(parts)
        owner = self.module
        ok = True
        for part in parts[:-1]:
            child = owner._modules.get(part)
            if child is None:
                if hasattr(owner, part):
                    ok = False
                    break
                child = torch.nn.Module()
                owner.add_module(part, child)
            owner = child
        if ok and not hasattr(owner, parts[-1]):
            return path
        flat, i = identifier(wanted), 1
        flat = f"onnx_{flat}" if flat in _RESERVED else flat
        candidate = flat
        while hasattr(self.module, candidate):
            candidate, i = f"{flat}_{i}", i + 1
        return candidate

    def _owner(self, path: str) -> tuple[torch.nn.Module, str]:
        *parents, leaf = path.split(".")
        owner = self.module
        for part in parents:
            owner = owner._modules[part]
        return owner, leaf

    def tensor(self, value: torch.Tensor, onnx_name: str) -> str:
        """The attribute path of ``value`` (registered once per ONNX name and tensor)."""
        key = (onnx_name, id(value))
        if key in self.by_onnx:
            return self.by_onnx[key]
        path = self._free_path(onnx_name)
        owner, leaf = self._owner(path)
        if self.trainable(onnx_name, value):
            param = torch.nn.Parameter(value.detach().clone())
            owner.register_parameter(leaf, param)
            self.promoted.add(id(param))
        else:
            persistent = self.trainable.persistent(onnx_name, value)
            owner.register_buffer(leaf, value.detach().clone(), persistent=persistent)
        self.by_onnx[key] = path
        self.names[path] = onnx_name
        return path

    def submodule(self, module: torch.nn.Module, onnx_name: str) -> str:
        path = self._free_path(onnx_name)
        owner, leaf = self._owner(path)
        owner.add_module(leaf, module)
        self.names[path] = onnx_name
        return path


class _Graph:
    """One ONNX graph (the main one, or a branch) being lowered into one fx graph."""

    def __init__(self, conv: _Converter, where: str, outer: _Graph | None, root: _Root):
        self.conv = conv
        self.where = where
        self.outer = outer
        self.root = root
        self.graph = fx.Graph()
        self.tracer = GraphAppendingTracer(self.graph)
        self.values: dict[str, Any] = {}
        self.captured: list[str] = []
        self.outer_consts: dict[str, int] = {}
        self.const_args: dict[str, Proxy] = {}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, tuple] = {}
        self._last_placeholder: fx.Node | None = None

    # values
    def placeholder(self, name: str) -> Proxy:
        if self._last_placeholder is None:
            first = next(iter(self.graph.nodes), None)
            ctx = self.graph.inserting_before(first) if first is not None else None
        else:
            ctx = self.graph.inserting_after(self._last_placeholder)
        if ctx is None:
            node = self.graph.placeholder(identifier(name))
        else:
            with ctx:
                node = self.graph.placeholder(identifier(name))
        node.meta["onnx_name"] = name
        self._last_placeholder = node
        return Proxy(node, self.tracer)

    def get(self, name: str) -> Any:
        if name == "":
            return None
        if name in self.values:
            return self.values[name]
        if self.outer is None:
            raise KeyError(f"{name!r} is neither an input, an initializer nor a node output")
        value = self.outer.get(name)
        if isinstance(value, Proxy):  # a run-time value of an enclosing graph: an argument
            value = self.placeholder(name)
            self.captured.append(name)
        elif isinstance(value, torch.Tensor):  # a constant of an enclosing graph (see attr)
            self.outer_consts[name] = id(value)
        self.values[name] = value
        return value

    def elem_type(self, name: str) -> int | None:
        g: _Graph | None = self
        while g is not None:
            if name in g.types:
                return g.types[name]
            g = g.outer
        return None

    def rank(self, name: str) -> int | None:
        g: _Graph | None = self
        while g is not None:
            if name in g.shapes:
                return len(g.shapes[name])
            g = g.outer
        value = self.values.get(name)
        return value.dim() if isinstance(value, torch.Tensor) else None

    def shape(self, name: str) -> tuple | None:
        g: _Graph | None = self
        while g is not None:
            if name in g.shapes:
                return g.shapes[name]
            g = g.outer
        value = self.values.get(name)
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None

    def attr(self, value: torch.Tensor, onnx_name: str) -> Proxy:
        """``value`` read at run time: an attribute of this graph's module, or, for a
        constant of an enclosing graph, an argument (the enclosing graph owns the weight,
        so one parameter serves every branch that reads it)."""
        if self.outer_consts.get(onnx_name) == id(value):
            if onnx_name not in self.const_args:
                self.const_args[onnx_name] = self.placeholder(onnx_name)
                self.captured.append(onnx_name)
            return self.const_args[onnx_name]
        path = self.root.tensor(value, onnx_name)
        return self.tracer.create_proxy("get_attr", path, (), {})

    def call_module(
        self, module: torch.nn.Module, onnx_name: str, args, at_run_time: bool = False
    ) -> Any:
        if not at_run_time and not any(isinstance(a, Proxy) for a in _flat(args)):
            return module(*args)
        path = self.root.submodule(module, onnx_name)
        return self.tracer.create_proxy("call_module", path, tuple(args), {})

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        """``fn(*args)`` now when every argument is known, else recorded in the graph."""
        if not any(isinstance(a, Proxy) for a in _flat((args, kwargs))):
            return fn(*args, **kwargs)
        return self.tracer.create_proxy("call_function", fn, args, kwargs)


def _flat(obj):
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _flat(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _flat(item)
    else:
        yield obj


class _Converter:
    def __init__(
        self,
        model,
        *,
        opsets: dict[str, int],
        batchnorm: str,
        max_bytes: int,
        path,
        trainable: Trainable,
    ):
        self.model = model
        self.trainable = trainable
        self.opsets = opsets
        self.opset = opsets.get("ai.onnx", opsets.get("", 0))
        self.batchnorm = batchnorm
        self.max_bytes = max_bytes
        self.path = path
        self.names: dict[str, str] = {}
        self.fallbacks: dict[str, int] = {}
        self.folded: dict[str, int] = {}
        self.promoted: set[int] = set()

    def label(self, node, index: int, where: str) -> str:
        name = f"{node.name!r}" if node.name else f"#{index} (output {node.output[0]!r})"
        domain = node.domain or "ai.onnx"
        return (
            f"node {name} in {where}: operator {node.op_type} (domain {domain}, "
            f"opset {self.opsets.get(domain, self.opsets.get(node.domain, '?'))})"
        )

    def refuse(self, node, index: int, where: str, reason: str, cause=None):
        domain = node.domain or "ai.onnx"
        key = node.op_type if domain == "ai.onnx" else f"{domain}.{node.op_type}"
        raise OnnxImportError(
            f"import_onnx: {self.path}: cannot convert {self.label(node, index, where)}: {reason}",
            [key],
            node=node.name or node.output[0],
            subgraph=where,
        ) from cause

    # graphs
    def build(self, graph_proto, g: _Graph, inputs: Sequence[str] | None) -> list[Any]:
        from onnx import numpy_helper

        for vi in [*graph_proto.input, *graph_proto.value_info, *graph_proto.output]:
            tt = vi.type.tensor_type
            if tt.elem_type:
                g.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                g.shapes[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim
                )
        for tensor in graph_proto.initializer:
            array = numpy_helper.to_array(tensor)
            g.values[tensor.name] = _to_torch(array)
            g.types[tensor.name] = tensor.data_type
        if inputs is not None:
            for name in inputs:
                if name not in g.values:  # IR < 4: initializers are listed as inputs too
                    g.values[name] = g.placeholder(name)
        for index, node in enumerate(graph_proto.node):
            self.node(g, node, index)
        return [g.get(o.name) for o in graph_proto.output]

    def node(self, g: _Graph, node, index: int) -> None:
        from . import onnx_ops

        domain = node.domain or "ai.onnx"
        if domain not in ("ai.onnx",):
            self.refuse(
                node,
                index,
                g.where,
                f"operators of domain {domain} are not converted (torch has no counterpart "
                "this import knows); re-export the model with standard ONNX operators only",
            )
        try:
            values = [g.get(name) for name in node.input]
        except KeyError as exc:
            self.refuse(node, index, g.where, str(exc.args[0]), exc)
        ctx = onnx_ops.Node(self, g, node, index, values)
        lowering = onnx_ops.LOWERINGS.get(node.op_type)
        before = len(g.graph.nodes)
        try:
            if lowering is None:
                outputs = self.fallback(ctx)
            else:
                outputs = lowering(ctx)
        except OnnxImportError:
            raise
        except onnx_ops.Unsupported as exc:
            # attributes the lowering does not take: onnx2pytorch's module may (verified)
            outputs = None
            if lowering is not None and len(g.graph.nodes) == before:
                with contextlib.suppress(Exception):
                    outputs = self.fallback(ctx)
            if outputs is None:
                self.refuse(node, index, g.where, str(exc), exc)
        except Exception as exc:  # the lowering's own failure: never bare to the user
            self.refuse(node, index, g.where, f"{type(exc).__name__}: {exc}", exc)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        if len(g.graph.nodes) == before and node.op_type not in ("Identity", "Dropout"):
            self.folded[node.op_type] = self.folded.get(node.op_type, 0) + 1
        label = self.label(node, index, g.where)
        for fx_node in list(g.graph.nodes)[before:]:
            fx_node.meta.setdefault("onnx_node", label)
        for name, value in zip(node.output, outputs):
            if name:
                if isinstance(value, torch.Tensor) and value.numel() * value.element_size() > (
                    self.max_bytes
                ):
                    self.refuse(
                        node,
                        index,
                        g.where,
                        f"its constant output {name!r} has {value.numel()} values, above "
                        f"max_tensor_bytes={self.max_bytes}",
                    )
                g.values[name] = value
                if isinstance(value, Proxy) and g.outer is None:
                    value.node.meta.setdefault("onnx_output", name)

    def fallback(self, ctx):
        """onnx2pytorch's module for one node, its inputs resolved now (NOTE [onnx to fx])."""
        from onnx import helper, numpy_helper
        from onnx2pytorch.constants import COMPOSITE_LAYERS, MULTIOUTPUT_LAYERS, STANDARD_LAYERS
        from onnx2pytorch.convert.operations import convert_operations
        from onnx2pytorch.operations import Loop, SubgraphOperator

        from . import onnx_ops
        from .onnx_import import supported_operators

        node = ctx.node
        if node.op_type not in supported_operators():
            raise onnx_ops.Unsupported(
                "no conversion exists for it (neither a torch lowering here nor in "
                "onnx2pytorch's table)"
            )
        if node.op_type in ("Loop", "Scan", "SequenceMap", "If"):
            raise onnx_ops.Unsupported(
                "a loop or scan over a run-time count is not converted: the graph has "
                "no fixed torch equivalent to train"
            )
        known = [
            (name, v)
            for name, v in zip(node.input, ctx.inputs)
            if isinstance(v, torch.Tensor) and name
        ]
        initializers = [numpy_helper.from_array(v.detach().cpu().numpy(), n) for n, v in known]
        sub = helper.make_graph([node], "one", [], [], initializer=initializers)
        _, _, op = next(iter(convert_operations(sub, self.opset, 0, False)))
        if isinstance(op, (Loop, SubgraphOperator)):
            raise onnx_ops.Unsupported("subgraph operators are not converted this way")
        standard = isinstance(op, STANDARD_LAYERS) or (
            isinstance(op, COMPOSITE_LAYERS)
            and any(isinstance(x, STANDARD_LAYERS) for x in op.modules())
        )
        known_names = {n for n, _ in known}
        if standard:
            args = [
                v for name, v in zip(node.input, ctx.inputs) if name and name not in known_names
            ]
        else:
            args = list(ctx.inputs)
            while args and args[-1] is None and len(args) > 1:
                args.pop()
            if any(isinstance(a, Proxy) for a in args):
                args = [
                    ctx.runtime(i) if isinstance(a, torch.Tensor) else a for i, a in enumerate(args)
                ]
        multi = isinstance(op, MULTIOUTPUT_LAYERS) or (
            isinstance(op, COMPOSITE_LAYERS)
            and any(isinstance(x, MULTIOUTPUT_LAYERS) for x in op.modules())
        )
        self.fallbacks[node.op_type] = self.fallbacks.get(node.op_type, 0) + 1
        if isinstance(op, torch.nn.Module):
            # one module per node: its weights train when any constant it took is trainable
            if any(self.trainable(name, v) for name, v in known):
                for p in op.parameters():
                    p.requires_grad_(p.is_floating_point())
            else:
                freeze(op)
            # random operators draw at run time even without run-time inputs
            out = ctx.g.call_module(op, ctx.name(), args, node.op_type in RANDOM_OPERATORS)
        elif node.op_type in RANDOM_OPERATORS:
            raise onnx_ops.Unsupported("a random operator without a module to run it")
        elif getattr(op, "func", None) is torch.cat:
            out = ctx.g.call(op, list(args))
        else:
            out = ctx.g.call(op, *args)
        if multi:
            return [out[i] for i in range(len(node.output))]
        return [out]


def _to_torch(array) -> torch.Tensor:
    import numpy as np

    if array.dtype.kind in "OSU":
        raise OnnxImportError("import_onnx: string tensors have no torch counterpart")
    if array.dtype == np.dtype("uint16") or array.dtype == np.dtype("uint32"):
        array = array.astype(np.int64)
    return torch.from_numpy(np.array(array, copy=True))


def convert_graph(
    model,
    *,
    batchnorm: str = "inference",
    max_bytes: int,
    path,
    trainable: Any = "weights",
) -> ConvertedGraph:
    """convert_graph(model, ...) -> ConvertedGraph: lower a (normalised) ModelProto to fx.

    ``trainable`` is the rule of :class:`Trainable` (NOTE [trainable weights]).
    """
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    rule = Trainable(trainable, weight_inputs(model))
    conv = _Converter(
        model, opsets=opsets, batchnorm=batchnorm, max_bytes=max_bytes, path=path, trainable=rule
    )
    root = _Root(conv.names, conv.promoted, rule)
    g = _Graph(conv, "the main graph", None, root)
    initializer_names = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializer_names]
    outputs = conv.build(model.graph, g, inputs)
    module = _finish(g, outputs, "OnnxGraph")
    return ConvertedGraph(module, conv.names, conv.fallbacks, conv.folded, conv.promoted, rule)


def _finish(
    g: _Graph, outputs: list[Any], class_name: str, as_tuple: bool = False
) -> fx.GraphModule:
    """Close ``g`` with ``outputs`` (constants become attributes) and build its GraphModule."""
    out_nodes = []
    for i, value in enumerate(outputs):
        if isinstance(value, torch.Tensor):
            value = g.attr(value, f"_output_{i}")
        if not isinstance(value, Proxy):
            raise OnnxImportError(f"import_onnx: output {i} of {g.where} is not a tensor")
        out_nodes.append(value.node)
    if len(out_nodes) == 1 and not as_tuple:
        g.graph.output(out_nodes[0])
    else:
        g.graph.output(tuple(out_nodes))
    module = fx.GraphModule(g.root.module, g.graph, class_name=class_name)
    module.graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    module.recompile()
    return module


def convert_branch(ctx, branch, where: str) -> tuple[fx.GraphModule, list[str], dict[str, str]]:
    """One ``If`` branch as its own GraphModule, the enclosing names it takes, its names."""
    conv = ctx.conv
    names: dict[str, str] = {}
    g = _Graph(conv, where, ctx.g, _Root(names, conv.promoted, conv.trainable))
    outputs = conv.build(branch, g, [])
    module = _finish(g, outputs, "OnnxBranch", as_tuple=True)
    return module, list(g.captured), names


def inline_branch(ctx, branch, where: str) -> list[Any]:
    """An ``If`` branch whose condition is known: its nodes join the enclosing graph."""
    g = ctx.g
    child = _Graph.__new__(_Graph)
    child.__dict__.update(g.__dict__)
    child.values = {}
    child.outer = g
    child.where = where
    child.captured = []
    child.outer_consts = {}
    child.const_args = {}
    child.types = {}
    child.shapes = {}

    def get(name, _child=child):
        if name == "":
            return None
        if name in _child.values:
            return _child.values[name]
        return g.get(name)

    child.get = get
    outputs = ctx.conv.build(branch, child, None)
    return outputs
