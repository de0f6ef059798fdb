"""The lowerings of onnx_ops, each checked against onnxruntime on graphs made here.

Each test builds one graph with many nodes (one per case, each its own output),
imports it without verification, and compares every output with onnxruntime's:
values, shapes and dtypes.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from torchbridge import OnnxImportError, import_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small graphs: see conftest


def _save(tmp_path: Path, nodes, inputs, outputs, initializers=(), opset: int = 18) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)  # the outputs' shapes
    path = tmp_path / "g.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _mismatches(path: Path, feed: dict[str, np.ndarray], atol: float = 0.0) -> list[str]:
    """Every output on which the imported module and onnxruntime disagree (value, shape, dtype)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, feed)
    names = [o.name for o in session.get_outputs()]
    module = import_onnx(path, verify=False)
    with torch.no_grad():
        got = module(*[torch.from_numpy(feed[i.name]) for i in session.get_inputs()])
    got = [got] if isinstance(got, torch.Tensor) else list(got.values())
    out = []
    for name, g, e in zip(names, got, expected):
        g = g.numpy()
        if g.dtype != e.dtype or g.shape != e.shape:
            out.append(f"{name}: {g.dtype}{g.shape} in torch, {e.dtype}{e.shape} in onnxruntime")
        elif not np.allclose(g, e, rtol=0, atol=atol, equal_nan=True):
            out.append(f"{name}: {g.tolist()} in torch, {e.tolist()} in onnxruntime")
    return out


def _ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _out(name: str, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, None)


class TestSlice:
    BOUNDS = [INT64_MIN, -100, -5, -2, 0, 2, 4, 5, 100, INT64_MAX]

    def test_clamping_of_starts_and_ends_for_every_step_sign(self, tmp_path):
        """Starts and ends out of range, negative, INT64_MIN/MAX, steps ±1 and ±2: as onnxruntime."""
        nodes, outputs, inits = [], [], []
        cases = itertools.product(self.BOUNDS, self.BOUNDS, [1, 2, -1, -2])
        for k, (start, end, step) in enumerate(cases):
            names = [f"s{k}", f"e{k}", f"a{k}", f"t{k}"]
            inits += [_ints(n, [v]) for n, v in zip(names, (start, end, 0, step))]
            nodes.append(helper.make_node("Slice", ["x", *names], [f"y{k}_{start}_{end}_{step}"]))
            outputs.append(_out(nodes[-1].output[0]))
        path = _save(
            tmp_path,
            nodes,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
            outputs,
            inits,
        )
        assert _mismatches(path, {"x": np.arange(5, dtype=np.float32)}) == []

    def test_several_axes_negative_axes_and_steps(self, tmp_path):
        """Slices over two axes at once, named by negative axes, with mixed step signs."""
        cases = [
            ([-100, 1], [INT64_MAX, -1], [-1, -2], [1, -1]),
            ([-1, 3], [INT64_MIN, -100], [-2, -1], [-1, -2]),
            ([0, -1], [-1, 0], [0, 1], [2, -1]),
            ([4, 100], [-100, 0], [1, 0], [-1, -2]),
        ]
        nodes, outputs, inits = [], [], []
        for k, (starts, ends, axes, steps) in enumerate(cases):
            names = [f"s{k}", f"e{k}", f"a{k}", f"t{k}"]
            inits += [_ints(n, v) for n, v in zip(names, (starts, ends, axes, steps))]
            nodes.append(helper.make_node("Slice", ["x", *names], [f"y{k}"]))
            outputs.append(_out(f"y{k}"))
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5])
        path = _save(tmp_path, nodes, [x], outputs, inits)
        assert _mismatches(path, {"x": np.arange(20, dtype=np.float32).reshape(4, 5)}) == []


class TestNegativeAxes:
    def test_operators_that_take_an_axis(self, tmp_path):
        """Gather (run-time and constant indices), GatherElements, Split, reductions ... at axis < 0."""
        nodes = [
            helper.make_node("Gather", ["x", "i"], ["gather_runtime"], axis=-1),
            helper.make_node("Gather", ["x", "i"], ["gather_runtime_mid"], axis=-2),
            helper.make_node("Gather", ["x", "ci"], ["gather_const"], axis=-1),
            helper.make_node("Gather", ["x", "c0"], ["gather_scalar"], axis=-2),
            helper.make_node("GatherElements", ["x", "ge"], ["gather_elements"], axis=-1),
            helper.make_node("Split", ["x"], ["split_a", "split_b"], axis=-1, num_outputs=2),
            helper.make_node("Concat", ["x", "x"], ["concat"], axis=-2),
            helper.make_node("Softmax", ["x"], ["softmax"], axis=-2),
            helper.make_node("ArgMax", ["x"], ["argmax"], axis=-2, keepdims=0),
            helper.make_node("CumSum", ["x", "cm1"], ["cumsum"]),
            helper.make_node("TopK", ["x", "k2"], ["topk_v", "topk_i"], axis=-2),
            helper.make_node("ReduceSum", ["x", "r1"], ["reduce_sum"], keepdims=0),
            helper.make_node("ReduceProd", ["x", "r31"], ["reduce_prod"], keepdims=0),
            helper.make_node("ReduceProd", ["x", "r13"], ["reduce_prod_pos"], keepdims=0),
            helper.make_node("ReduceMax", ["x", "r21"], ["reduce_max"], keepdims=1),
            helper.make_node("Unsqueeze", ["x", "u"], ["unsqueeze"]),
            helper.make_node("Flatten", ["x"], ["flatten"], axis=-1),
            helper.make_node("Pad", ["x", "pads", "", "pad_axes"], ["pad"]),
        ]
        inits = [
            _ints("ci", [[0, -1], [-4, 2]]),
            _ints("c0", -1),
            _ints("ge", np.array([[-1, 0], [1, -2], [3, 0]] * 2).reshape(2, 3, 2)),
            _ints("cm1", -1),
            _ints("k2", [2]),
            _ints("r1", [-1]),
            _ints("r31", [-3, 2]),
            _ints("r13", [2, -3]),
            _ints("r21", [-2, -1]),
            _ints("u", [-1]),
            _ints("pads", [1, 2]),
            _ints("pad_axes", [-1]),
        ]
        types = {"argmax": TensorProto.INT64, "topk_i": TensorProto.INT64}
        outputs = [_out(o, types.get(o, TensorProto.FLOAT)) for n in nodes for o in n.output]
        inputs = [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
            helper.make_tensor_value_info("i", TensorProto.INT64, [2]),
        ]
        path = _save(tmp_path, nodes, inputs, outputs, inits)
        x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
        assert _mismatches(path, {"x": x, "i": np.array([0, -1])}, atol=1e-6) == []


class TestRecurrentSequenceLengths:
    def _recurrent(self, tmp_path, kind: str, lens, seq="fixed") -> Path:
        rng = np.random.default_rng(0)
        gates, hidden, features = {"LSTM": 4, "GRU": 3}[kind], 4, 3
        inits = [
            numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
            for name, shape in (
                ("W", (1, gates * hidden, features)),
                ("R", (1, gates * hidden, hidden)),
                ("B", (1, 2 * gates * hidden)),
            )
        ]
        inputs = [
            helper.make_tensor_value_info(
                "x", TensorProto.FLOAT, [5 if seq == "fixed" else "seq", 2, features]
            )
        ]
        if lens is None:  # given at run time
            inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [2]))
        else:
            inits.append(numpy_helper.from_array(np.array(lens, np.int32), "lens"))
        attrs = {"linear_before_reset": 1} if kind == "GRU" else {}
        node = helper.make_node(
            kind, ["x", "W", "R", "B", "lens"], ["y"], hidden_size=hidden, name="rnn", **attrs
        )
        return _save(tmp_path, [node], inputs, [_out("y")], inits, opset=14)

    @pytest.mark.parametrize("kind", ["LSTM", "GRU"])
    def test_full_lengths_are_taken(self, tmp_path, kind):
        """sequence_lens equal to the sequence length for every batch element: as onnxruntime."""
        path = self._recurrent(tmp_path, kind, [5, 5])
        x = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(np.float32)
        assert _mismatches(path, {"x": x}, atol=1e-5) == []
        assert import_onnx(path).import_report.max_abs_diff <= 1e-5

    @pytest.mark.parametrize("kind", ["LSTM", "GRU"])
    @pytest.mark.parametrize(
        "lens, seq, match",
        [
            ([5, 3], "fixed", r"sequence_lens \[5, 3\] shorter than the sequence length 5"),
            ([5, 5], "free", "sequence length is not fixed"),
            (None, "fixed", "sequence_lens given at run time"),
        ],
    )
    def test_other_lengths_are_refused_even_unverified(self, tmp_path, kind, lens, seq, match):
        """A padded batch (or lengths not known to be full) is refused by node, not ignored."""
        path = self._recurrent(tmp_path, kind, lens, seq)
        with pytest.raises(OnnxImportError, match=match) as err:
            import_onnx(path, verify=False)
        assert err.value.node == "rnn" and err.value.operators == (kind,)


class TestResizeNearest:
    COORDINATES = [
        "half_pixel",
        "pytorch_half_pixel",
        "align_corners",
        "asymmetric",
        "tf_half_pixel_for_nn",
        "half_pixel_symmetric",
    ]
    ROUNDINGS = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
    SCALES = [(0.5, 2.0), (2.0, 0.25), (0.6, 1.5), (1 / 3, 1.75), (3.0, 0.8)]
    SIZES = [(3, 5), (1, 11), (16, 13), (4, 14)]

    def test_every_coordinate_mode_and_rounding_up_and_down(self, tmp_path):
        """Every (coordinate_transformation_mode, nearest_mode) pair, by scales and by sizes,
        enlarging and shrinking: the same pixels as onnxruntime."""
        nodes, outputs, inits = [], [], []
        for k, (ctm, rounding) in enumerate(itertools.product(self.COORDINATES, self.ROUNDINGS)):
            for j, target in enumerate(self.SCALES + self.SIZES):
                name = f"t{k}_{j}"
                if j < len(self.SCALES):
                    inits.append(
                        numpy_helper.from_array(np.array([1, 1, *target], np.float32), name)
                    )
                    args = ["x", "", name]
                else:
                    inits.append(_ints(name, [1, 2, *target]))
                    args = ["x", "", "", name]
                out = f"y_{ctm}_{rounding}_{'x'.join(f'{t:.3g}' for t in target)}"
                nodes.append(
                    helper.make_node(
                        "Resize",
                        args,
                        [out],
                        mode="nearest",
                        coordinate_transformation_mode=ctm,
                        nearest_mode=rounding,
                    )
                )
                outputs.append(_out(out))
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 7])
        path = _save(tmp_path, nodes, [x], outputs, inits, opset=19)
        feed = {"x": np.arange(112, dtype=np.float32).reshape(1, 2, 8, 7)}
        assert _mismatches(path, feed) == []

    def test_the_default_rounding_shrinking_by_two_verifies(self, tmp_path):
        """half_pixel with the default round_prefer_floor, halving: the reported case, verified."""
        scales = numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "scales")
        node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])
        path = _save(tmp_path, [node], [x], [_out("y")], [scales], opset=13)
        module = import_onnx(path)
        assert module.import_report.max_abs_diff == 0.0
        feed = {"x": np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)}
        assert _mismatches(path, feed) == []
        image = torch.arange(64.0).reshape(1, 1, 8, 8).requires_grad_(True)
        module(image).sum().backward()  # differentiable in the input: each picked pixel once
        assert image.grad.sum() == 16 and set(image.grad.unique().tolist()) == {0.0, 1.0}

    @pytest.mark.parametrize("op, opset", [("Upsample", 9), ("Resize", 10)])
    def test_upsample_and_resize_10(self, tmp_path, op, opset):
        """Upsample and Resize-10 (no nearest_mode): floor when enlarging, as onnxruntime;
        Resize-10 rounds up when shrinking."""
        cases = [(2.0, 3.0), (1.5, 2.0)] + ([(0.5, 0.6)] if op == "Resize" else [])
        nodes, outputs, inits = [], [], []
        for k, (sh, sw) in enumerate(cases):
            inits.append(numpy_helper.from_array(np.array([1, 1, sh, sw], np.float32), f"s{k}"))
            nodes.append(helper.make_node(op, ["x", f"s{k}"], [f"y{k}"], mode="nearest"))
            outputs.append(_out(f"y{k}"))
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 6])
        path = _save(tmp_path, nodes, [x], outputs, inits, opset=opset)
        assert _mismatches(path, {"x": np.arange(30, dtype=np.float32).reshape(1, 1, 5, 6)}) == []


class TestIntegerTypes:
    @pytest.mark.parametrize(
        "elem, dtype", [(TensorProto.INT32, np.int32), (TensorProto.INT64, np.int64)]
    )
    def test_integer_operators_keep_their_type(self, tmp_path, elem, dtype):
        """Clip with integer bounds, Min/Max, Pow, Div, reductions, CumSum ... on int32 and
        int64: the values and the dtype of onnxruntime (torch would widen or make floats)."""

        def const(name, value):
            return numpy_helper.from_array(np.array(value, dtype), name)

        nodes = [
            helper.make_node("Clip", ["x", "lo", "hi"], ["clip"]),
            helper.make_node("Clip", ["x", "lo"], ["clip_lo"]),
            helper.make_node("Clip", ["x", "", "hi"], ["clip_hi"]),
            helper.make_node("Clip", ["x", "zero", "six"], ["clip_0_6"]),
            helper.make_node("Min", ["x", "y"], ["min"]),
            helper.make_node("Max", ["x", "y", "row"], ["max"]),
            helper.make_node("Pow", ["x", "two"], ["pow"]),
            helper.make_node("Div", ["x", "y"], ["div"]),
            helper.make_node("Div", ["x", "two"], ["div_const"]),
            helper.make_node("Mod", ["x", "y"], ["mod"]),
            helper.make_node("Mul", ["x", "two"], ["mul"]),
            helper.make_node("Sub", ["two", "x"], ["sub"]),
            helper.make_node("CumSum", ["x", "axis"], ["cumsum"]),
            helper.make_node("Abs", ["x"], ["abs"]),
            helper.make_node("Neg", ["x"], ["neg"]),
            helper.make_node("Sign", ["x"], ["sign"]),
            helper.make_node("Relu", ["x"], ["relu"]),
            helper.make_node("Where", ["b", "x", "y"], ["where"]),
            helper.make_node("Range", ["lo", "hi", "two"], ["range"]),
            helper.make_node("TopK", ["x", "k"], ["topk", "topk_indices"]),
            helper.make_node("Tile", ["x", "reps"], ["tile"]),
        ]
        for op in ("Sum", "Prod", "Max", "Min", "SumSquare", "L1", "L2", "Mean", "LogSumExp"):
            nodes.append(
                helper.make_node(f"Reduce{op}", ["x", "axes"], [f"reduce_{op}"], keepdims=0)
            )
        inits = [
            const("lo", -1),
            const("hi", 5),
            const("zero", 0),
            const("six", 6),
            const("two", 2),
            const("row", [3, 1, 2]),
            _ints("axes", [1]),
            _ints("axis", 1),
            _ints("k", [2]),
            _ints("reps", [1, 2]),
        ]
        inputs = [
            helper.make_tensor_value_info("x", elem, [2, 3]),
            helper.make_tensor_value_info("y", elem, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.BOOL, [2, 3]),
        ]
        outputs = [
            _out(o, TensorProto.INT64 if o == "topk_indices" else elem)
            for node in nodes
            for o in node.output
        ]
        path = _save(tmp_path, nodes, inputs, outputs, inits)
        feed = {
            "x": np.array([[-3, 2, 9], [4, -1, 7]], dtype),
            "y": np.array([[2, -3, 4], [1, 5, -2]], dtype),
            "b": np.array([[True, False, True], [False, True, False]]),
        }
        assert _mismatches(path, feed) == []
