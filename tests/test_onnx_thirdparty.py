"""import_onnx on ONNX files nobody here wrote: the ones PyPI wheels ship.

- rapidocr-onnxruntime: PaddleOCR's detector, recogniser and direction classifier
  (PaddlePaddle exports, Constant-node weights);
- silero-vad: six voice-activity files (TorchScript exports: LSTMs whose weights
  are computed from constants, If branches on the sample rate, half precision,
  a sequence model);
- magika: a content-type classifier (a JAX model exported through tf2onnx);
- nudenet: a YOLOv8n detector (downloaded as a wheel with ``pip download
  --no-deps``, since nudenet's own dependencies pull opencv; skipped offline).

Each file imports, verifies against onnxruntime (on the inputs its package
feeds it where random ones are not valid), trains (every parameter gets a
gradient, one step changes the output), has as parameters every constant
``trainable="all"`` would make one, and reloads its state_dict strictly.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from torchbridge import import_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxslim")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small graphs: see conftest


def _package_file(module: str, relative: str) -> Path:
    """A file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{module} (a dev dependency) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        pytest.skip(f"{path} is not in this version of {module}")
    return path


def _wheel_member(requirement: str, member: str) -> Path:
    """``member`` of the wheel of ``requirement``, fetched once with ``pip download --no-deps``.

    Kept in ``$TORCHBRIDGE_TEST_WHEELS`` (default: ~/.cache/torchbridge-test-wheels);
    skipped when the index cannot be reached.
    """
    cache = Path(
        os.environ.get(
            "TORCHBRIDGE_TEST_WHEELS", Path.home() / ".cache" / "torchbridge-test-wheels"
        )
    )
    target = cache / requirement.replace("=", "_") / member
    if target.is_file():
        return target
    folder = cache / "download"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "-d",
                str(folder),
                requirement,
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"cannot download {requirement} (offline?): {exc}")
    name = requirement.split("==")[0].replace("-", "_")
    wheels = sorted(folder.glob(f"{name}-*.whl"))
    if not wheels:
        pytest.skip(f"pip downloaded no wheel for {requirement}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(wheel.read(member))
        partial.replace(target)
    return target


_rng = np.random.default_rng(0)


def _audio(n: int, batch: int = 1) -> np.ndarray:
    return (_rng.standard_normal((batch, n)) * 0.1).astype(np.float32)


def _bytes() -> np.ndarray:
    """Magika's input: the first 2048 bytes of a real file (this one), as int32 values."""
    data = np.frombuffer(Path(__file__).read_bytes()[:2048], dtype=np.uint8).astype(np.int32)
    return np.pad(data, (0, 2048 - data.size), constant_values=256)[None]


def _state(batch: int = 1) -> np.ndarray:
    return np.zeros((2, batch, 128), np.float32)


# id -> (file, import keywords); inputs are what each package feeds its model
CASES = {
    "paddleocr-det": (
        lambda: _package_file("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"),
        {"input_shapes": {"x": (3, 64, 64)}},
    ),
    "paddleocr-rec": (
        lambda: _package_file("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx"),
        {"input_shapes": {"x": (3, 48, 96)}},
    ),
    "paddleocr-cls": (
        lambda: _package_file("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
        {"input_shapes": {"x": (3, 48, 192)}},
    ),
    "silero-vad": (
        lambda: _package_file("silero_vad", "data/silero_vad.onnx"),
        {
            "inputs": [
                {"input": _audio(512), "state": _state(), "sr": np.array(16000)},
                {"input": _audio(256, 2), "state": _state(2), "sr": np.array(8000)},
            ]
        },
    ),
    "silero-vad-16k-op15": (
        lambda: _package_file("silero_vad", "data/silero_vad_16k_op15.onnx"),
        {"inputs": {"input": _audio(576), "state": _state(), "sr": np.array(16000)}},
    ),
    "silero-vad-half": (
        lambda: _package_file("silero_vad", "data/silero_vad_half.onnx"),
        {"inputs": {"input": _audio(576), "state": _state()}},
    ),
    "silero-vad-ifless": (
        lambda: _package_file("silero_vad", "data/silero_vad_op18_ifless.onnx"),
        {
            "inputs": [
                {"input": _audio(576), "sr": np.array(16000), "state": _state()},
                {"input": _audio(256), "sr": np.array(8000), "state": _state()},
            ]
        },
    ),
    "silero-vad-sequence": (
        lambda: _package_file("silero_vad", "data/silero_vad_16k_sequence.onnx"),
        {
            "inputs": {
                "input": _audio(576, 3),
                "h": np.zeros((1, 1, 128), np.float32),
                "c": np.zeros((1, 1, 128), np.float32),
            }
        },
    ),
    "silero-vad-openvino": (
        lambda: _package_file("silero_vad", "data/silero_vad_openvino_16k.onnx"),
        {},
    ),
    "magika": (
        lambda: _package_file("magika", "models/standard_v3_3/model.onnx"),
        {"inputs": {"bytes": _bytes()}},
    ),
    "nudenet-yolov8n": (
        lambda: _wheel_member("nudenet==3.4.2", "nudenet/320n.onnx"),
        {"input_shapes": {"images": (3, 96, 96)}},
    ),
}


def _batches(module, keywords) -> list[list[torch.Tensor]]:
    """The caller's batches (every If branch they reach), or one random batch."""
    given = keywords.get("inputs")
    if given is not None:
        batches = [given] if isinstance(given, dict) else given
        names = [i.name for i in module.import_report.inputs]
        return [[torch.from_numpy(np.asarray(b[n])) for n in names] for b in batches]
    shapes = keywords.get("input_shapes", {})
    out = []
    for info in module.import_report.inputs:
        dims = [2, *shapes[info.name]] if info.name in shapes else [d for d in info.shape]
        out.append(torch.randn(dims))
    return [out]


def _loss(out) -> torch.Tensor:
    outs = [out] if isinstance(out, torch.Tensor) else list(out.values())
    return sum(o.float().square().mean() for o in outs if o.is_floating_point())


@pytest.mark.parametrize("case", list(CASES))
def test_imports_verifies_trains_and_reloads(case):
    """The wheel's file imports, matches onnxruntime, trains and reloads its weights strictly."""
    find, keywords = CASES[case]
    path = find()
    module = import_onnx(path, **keywords)
    report = module.import_report
    assert report.max_abs_diff is not None and report.max_abs_diff <= report.tolerance
    assert report.fallbacks == {}, report.fallbacks
    assert report.parameters > 10_000

    batches = _batches(module, keywords)
    module.train()

    def total(m):
        return sum(_loss(m(*xs)) for xs in batches)

    with torch.no_grad():
        before = total(module).item()
    total(module).backward()
    missing = [n for n, p in module.named_parameters() if p.grad is None]
    assert not missing, f"No gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())
    with torch.no_grad():
        for p in module.parameters():
            p.sub_(1e-2 * p.grad / (p.grad.norm() + 1e-12))
        after = total(module).item()
    assert after != before

    state = module.state_dict()
    keywords = {k: v for k, v in keywords.items() if k != "inputs"}
    again = import_onnx(path, verify=False, trainable="all", **keywords)
    # every weight these files hold is read in a weight slot (NOTE [trainable weights])
    assert again.import_report.parameter_names == report.parameter_names
    again.load_state_dict(state, strict=True)
    again.train()
    with torch.no_grad():
        assert total(again).item() == pytest.approx(after, rel=1e-5)


def test_silero_sample_rate_picks_the_branch():
    """Silero's If on the sample rate stays a run-time branch: 8000 and 16000 give different models."""
    module = import_onnx(_package_file("silero_vad", "data/silero_vad.onnx"), verify=False)
    assert "If" in module.import_report.operators
    x, state = torch.from_numpy(_audio(256)), torch.zeros(2, 1, 128)
    with torch.no_grad():
        p16 = module(x, state, torch.tensor(16000))["output"]
        p8 = module(x, state, torch.tensor(8000))["output"]
    assert not torch.allclose(p16, p8)
