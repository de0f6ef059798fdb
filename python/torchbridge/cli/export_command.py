"""``torchbridge export MODEL_ID -o OUT.onnx``: a registry model to a verified ONNX file.

Prints a summary (or, with ``--json``, the export report as JSON on stdout).
Errors go to stderr (or, with ``--json``, as ``{"error": ...}`` on stdout)
with exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def _input_size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        size = ()
    if not size or any(n < 1 for n in size):
        raise argparse.ArgumentTypeError(
            "expected positive sizes in torch order without the batch, e.g. 3,224,224; "
            f"got {text!r}"
        )
    return size


def _head_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of classes (0 or more), got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """register(subparsers) -> None: add ``export``."""
    p = subparsers.add_parser(
        "export",
        help="export a registry model to ONNX, checked and verified with onnxruntime",
        description=(
            "Export a registry model to one ONNX file with a dynamic batch dimension, check it "
            "with onnx.checker and compare onnxruntime with torch at batch sizes 1 and 3."
        ),
    )
    p.add_argument("model_id", help="a registry id, e.g. timm/resnet18 or local/my-model")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--weights", default=None, help="a weight file (.safetensors, .pth) to load")
    p.add_argument(
        "--num-classes",
        type=_head_size,
        default=None,
        help="the classifier head size of the --weights file (0: export the features only)",
    )
    p.add_argument(
        "--input-size",
        type=_input_size,
        default=None,
        help="one sample in torch order, C,H,W (default: the registry's input size)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's choice)")
    p.add_argument(
        "--fixed-batch", action="store_true", help="export for batches of one, not a dynamic batch"
    )
    p.add_argument(
        "--trust-repo",
        action="store_true",
        help="import the torch.hub repository that builds a hub/ model (it runs its code)",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the code a Hugging Face repository ships with its model",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    """Export, then print the report; torchbridge errors become exit code 1."""
    from ..errors import TorchBridgeError
    from ..export import export_onnx

    try:
        report = export_onnx(
            args.model_id,
            args.output,
            input_size=args.input_size,
            dynamic_batch=not args.fixed_batch,
            opset=args.opset,
            verify=not args.no_verify,
            weights=args.weights,
            num_classes=args.num_classes,
            trust_repo=args.trust_repo,
            trust_remote_code=args.trust_remote_code,
        )
    except (TorchBridgeError, OSError) as err:  # an OS error (a folder not writable ...) too
        payload: dict[str, Any] = {"error": type(err).__name__, "message": str(err)}
        if getattr(err, "suggestions", None):
            payload["suggestions"] = list(err.suggestions)
        if args.json:
            json.dump(payload, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        json.dump({"model_id": args.model_id, **report.to_dict()}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"wrote {report.path} ({report.file_size / 1e6:.1f} MB, opset {report.opset})")
    if report.external_data is not None:
        print(f"  weights in {report.external_data}")
    for kind, tensors in (("input", report.inputs), ("output", report.outputs)):
        for t in tensors:
            print(f"  {kind} {t.name}: {t.dtype}[{', '.join(str(d) for d in t.shape)}]")
    if report.max_abs_diff is not None:
        sizes = ", ".join(str(b) for b in report.batch_sizes_checked)
        print(
            f"  verified with {report.verified_with} at batch sizes {sizes}: "
            f"max |diff| {report.max_abs_diff:.2e} (tolerance {report.tolerance:g})"
        )
    else:
        print("  not verified numerically (onnxruntime missing or --no-verify)")
    for note in report.notes:
        print(f"  note: {note}")
    print(f"  {report.seconds:.1f} s")
    return 0
