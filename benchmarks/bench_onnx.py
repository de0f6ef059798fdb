"""Imported ONNX modules against the originals (training) and onnxruntime (inference).

- ``onnx_import_step_over_torch_resnet18``: torchvision resnet18 exported with
  each torch exporter (TorchScript, ``dynamo=False``; dynamo, ``dynamo=True``),
  imported with ``import_onnx``, and its training step (forward, cross-entropy,
  backward, SGD) timed against the original module's, steps interleaved. The
  figure is the larger of the two exporters' ratios.
- ``onnx_import_forward_over_ort_small``: Silero VAD's 63-node sequence model
  (the silero-vad wheel's ``silero_vad_16k_sequence.onnx``), one forward in
  torch (``no_grad``) against one ``InferenceSession.run``, interleaved.
  Other third-party files are reported beside it, and the small graph again
  with oneDNN off (``torch.backends.mkldnn.flags(enabled=False)``), whose
  set-up cost dominates tiny convolutions and LSTMs.

Everything runs on one thread (``torch.set_num_threads(1)``, onnxruntime's
intra- and inter-op threads 1), and each side is scored by its median.

Run alone: ``python benchmarks/bench_onnx.py`` prints the dict ``run()`` returns.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

IMAGE = (3, 112, 112)
BATCH = 8
STEPS = 10  # timed steps per side and exporter
FORWARDS = 200  # timed forwards per side and file


def _interleaved(a, b, n: int) -> tuple[float, float]:
    """Medians of ``n`` timed calls of ``a`` and ``b``, alternating which goes first."""
    ta, tb = [], []
    for i in range(n):
        for fn, out in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def _export(model, path: Path, dynamo: bool) -> None:
    import torch

    x = torch.randn(2, *IMAGE)
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=True,
                input_names=["x"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
        else:
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                input_names=["x"],
                dynamic_axes={"x": {0: "batch"}},
            )


def _training(results: dict) -> None:
    import torch
    import torchvision

    from torchbridge import import_onnx

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10)
    x, y = torch.randn(BATCH, *IMAGE), torch.randint(0, 10, (BATCH,))

    def stepper(model):
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    ratios = []
    with tempfile.TemporaryDirectory() as folder:
        for exporter, dynamo in (("torchscript", False), ("dynamo", True)):
            path = Path(folder) / f"resnet18_{exporter}.onnx"
            _export(copy.deepcopy(reference).eval(), path, dynamo)
            imported = import_onnx(path, verify=False).train()
            plain = copy.deepcopy(reference).train()
            a, b = stepper(imported), stepper(plain)
            for _ in range(2):
                a(), b()
            t_imported, t_plain = _interleaved(a, b, STEPS)
            ratio = t_imported / t_plain
            ratios.append(ratio)
            results[f"onnx_import_step_over_torch_resnet18_{exporter}"] = ratio
            results[f"onnx_import_step_ms_resnet18_{exporter}"] = t_imported * 1e3
            results[f"torch_step_ms_resnet18_{exporter}"] = t_plain * 1e3
    results["onnx_import_step_over_torch_resnet18"] = max(ratios)


def _package_file(module: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def _inference(results: dict) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    from torchbridge import import_onnx

    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((4, 576)) * 0.1).astype(np.float32)
    files = {
        "small": (
            _package_file("silero_vad", "data/silero_vad_16k_sequence.onnx"),
            {
                "input": audio,
                "h": np.zeros((1, 1, 128), np.float32),
                "c": np.zeros((1, 1, 128), np.float32),
            },
        ),
        "silero_ifless": (
            _package_file("silero_vad", "data/silero_vad_op18_ifless.onnx"),
            {
                "input": audio[:1],
                "sr": np.array(16000),
                "state": np.zeros((2, 1, 128), np.float32),
            },
        ),
        "magika": (
            _package_file("magika", "models/standard_v3_3/model.onnx"),
            {"bytes": rng.integers(0, 256, (1, 2048)).astype(np.int32)},
        ),
        "paddleocr_cls": (
            _package_file("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
            {"x": rng.standard_normal((1, 3, 48, 192)).astype(np.float32)},
        ),
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    for key, (path, feed) in files.items():
        if path is None:
            results[f"onnx_import_forward_over_ort_{key}"] = "skipped: package not installed"
            continue
        module = import_onnx(path, inputs=feed).eval()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        xs = [torch.from_numpy(feed[i.name]) for i in module.import_report.inputs]

        def forward(module=module, xs=xs):
            with torch.no_grad():
                module(*xs)

        def reference(session=session, feed=feed):
            session.run(None, feed)

        for _ in range(5):
            forward(), reference()
        t_torch, t_ort = _interleaved(forward, reference, FORWARDS)
        results[f"onnx_import_forward_over_ort_{key}"] = t_torch / t_ort
        results[f"onnx_import_forward_us_{key}"] = t_torch * 1e6
        results[f"ort_forward_us_{key}"] = t_ort * 1e6
        results[f"onnx_nodes_{key}"] = sum(module.import_report.operators.values())
        if key == "small":  # oneDNN's set-up dominates tiny convolutions and LSTMs
            with torch.backends.mkldnn.flags(enabled=False):
                t_plain, t_ort = _interleaved(forward, reference, FORWARDS)
            results["onnx_import_forward_over_ort_small_onednn_off"] = t_plain / t_ort


def run() -> dict:
    """run() -> {"onnx_import_step_over_torch_resnet18": ratio, ...}"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results: dict = {}
    try:
        _training(results)
        _inference(results)
    finally:
        torch.set_num_threads(threads)
    results["onnx_setup"] = (
        f"one thread; resnet18 step: batch {BATCH}x{'x'.join(map(str, IMAGE))}, SGD, "
        f"{STEPS} interleaved steps; forwards: {FORWARDS} interleaved, medians"
    )
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
