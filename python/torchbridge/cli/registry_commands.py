"""``torchbridge list | search | info | doctor``: the registry from the command line.

Each command prints a table (rich) or, with ``--json``, JSON on stdout.
Errors go to stderr (or, with ``--json``, as ``{"error": ...}`` on stdout)
with exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """register(subparsers) -> None: add ``list``, ``search``, ``info`` and ``doctor``."""
    p = subparsers.add_parser("list", help="list models, filtered by a wildcard pattern")
    p.add_argument(
        "pattern", nargs="?", default=None, help="shell wildcards over id or name, e.g. 'resnet*'"
    )
    p.add_argument(
        "--source", "-s", default=None, help="only this source (timm, torchvision, hub, local ...)"
    )
    p.add_argument("--pretrained", action="store_true", help="only models with published weights")
    p.add_argument("--task", default=None, help="only this task, e.g. image-classification")
    _add_json(p)
    p.set_defaults(func=_guarded(_cmd_list))

    p = subparsers.add_parser("search", help="free-text search, best match first")
    p.add_argument("query", help="e.g. 'tiny vision transformer'")
    p.add_argument(
        "--limit", "-n", type=int, default=20, help="at most this many results (default 20)"
    )
    _add_json(p)
    p.set_defaults(func=_guarded(_cmd_search))

    p = subparsers.add_parser("info", help="everything the registry knows about one model")
    p.add_argument("model_id", help="e.g. timm/resnet18.a1_in1k")
    _add_json(p)
    p.set_defaults(func=_guarded(_cmd_info))

    p = subparsers.add_parser("doctor", help="versions, Julia, cache folders and offline state")
    _add_json(p)
    p.set_defaults(func=_guarded(_cmd_doctor))


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn torchbridge's own errors, and the operating system's, into one line and exit
    code 1 (no traceback)."""

    def run(args: argparse.Namespace) -> int:
        from ..errors import TorchBridgeError

        try:
            return command(args)
        except (TorchBridgeError, OSError) as err:
            payload: dict[str, Any] = {"error": type(err).__name__, "message": str(err)}
            suggestions = getattr(err, "suggestions", None)
            if suggestions:
                payload["suggestions"] = list(suggestions)
            if getattr(args, "json", False):
                _print_json(payload)
            else:
                print(f"error: {err}", file=sys.stderr)
            return 1

    run.__doc__ = command.__doc__
    return run


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _console():
    from rich.console import Console

    return Console()


# -- list / search -----------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    """List models."""
    from ..registry import list_models

    entries = list_models(
        args.pattern,
        source=args.source,
        pretrained=True if args.pretrained else None,
        task=args.task,
    )
    if args.json:
        _print_json([e.to_dict() for e in entries])
    else:
        _print_entries(entries, title=f"{len(entries)} models")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    """Search models."""
    from ..registry import search_models

    entries = search_models(args.query, limit=args.limit)
    if args.json:
        _print_json([e.to_dict() for e in entries])
    else:
        _print_entries(entries, title=f"best matches for {args.query!r}")
    return 0


def _size(size: Any) -> str:
    return "x".join(str(s) for s in size) if size else "-"


def _bytes(n: int) -> str:
    """1_234_567 -> '1.2 MB' (powers of 1000, as disk sizes are quoted)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover


def _print_entries(entries: list[Any], *, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in (
        "id",
        "task",
        "pretrained",
        "cached",
        "input (torch)",
        "input (julia)",
        "classes",
    ):
        table.add_column(column, no_wrap=column == "id")
    for e in entries:
        table.add_row(
            e.id,
            e.task,
            "yes" if e.pretrained else "no",
            "yes" if e.weights is not None and e.weights.cached else "no",
            _size(e.input_size),
            _size(e.julia_input_size),
            "-" if e.num_classes is None else str(e.num_classes),
        )
    _console().print(table)


# -- info --------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    """Describe one model."""
    from ..registry import feature_channels, model_info
    from ..registry.sizes import model_size

    entry = model_info(args.model_id)
    channels = feature_channels(args.model_id)
    size = model_size(args.model_id)
    if args.json:
        _print_json(
            {
                **entry.to_dict(),
                "feature_channels": channels,
                "size": None if size is None else size.to_dict(),
            }
        )
        return 0
    from rich.table import Table

    table = Table(title=entry.id, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("description", entry.description),
        ("source", entry.source),
        ("task", entry.task),
        ("pretrained", "yes" if entry.pretrained else "no"),
        ("input size (torch)", _size(entry.input_size)),
        ("input size (julia)", _size(entry.julia_input_size)),
        ("mean", str(entry.mean) if entry.mean else "-"),
        ("std", str(entry.std) if entry.std else "-"),
        ("classes", "-" if entry.num_classes is None else str(entry.num_classes)),
        ("feature channels", "-" if channels is None else str(channels)),
        ("parameters", "-" if size is None else f"{size.parameters:,}"),
        (
            "bytes per dtype",
            "-"
            if size is None
            else ", ".join(f"{k} {_bytes(v)}" for k, v in sorted(size.bytes.items())),
        ),
        ("sizes from", "-" if size is None else size.counted_from),
        ("license", entry.license or "-"),
        ("tags", ", ".join(entry.tags)),
    ]
    if entry.metadata.get("adapter_folder"):
        rows.append(("LoRA adapter on", entry.metadata.get("architecture", "?")))
    if entry.weights is not None:
        w = entry.weights
        rows += [
            ("weights from", w.location),
            ("weights file", w.filename or "-"),
            ("cached", "yes" if w.cached else "no"),
            ("local path" if w.cached else "would be at", w.path or "-"),
            ("sha256", w.sha256 or "-"),
        ]
    for key, value in rows:
        table.add_row(key, str(value))
    _console().print(table)
    return 0


# -- doctor ------------------------------------------------------------------

_PACKAGES = (
    "torch",
    "timm",
    "torchvision",
    "safetensors",
    "huggingface_hub",
    "transformers",
    "tokenizers",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "juliacall",
)


def doctor_report() -> dict[str, Any]:
    """doctor_report() -> dict: what ``torchbridge doctor`` prints.

    Reads package versions from their metadata, so nothing heavy is imported
    except torch (for CUDA), and juliacall is never imported: without
    ``PYTHON_JULIAPKG_OFFLINE=yes`` that would try to download Julia.
    ``broken_entries`` lists the description files the registry skips
    (NOTE [broken entries]): each ``file`` and its ``problem``.
    """
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__
    from ..registry import paths
    from ..registry.core import get_registry

    packages: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None

    torch_info: dict[str, Any] = {"version": packages.get("torch")}
    try:
        import torch

        torch_info.update(
            version=torch.__version__,
            cuda_available=torch.cuda.is_available(),
            cuda_version=torch.version.cuda,
            devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        )
    except Exception as err:  # a broken torch is exactly what doctor should report
        torch_info["error"] = f"{type(err).__name__}: {err}"

    julia_on_path = shutil.which("julia")
    julia_env = os.environ.get("PYTHON_JULIAPKG_EXE")
    registry = get_registry()
    sources = {
        s.name: {"available": s.available(), "needs": s.requirement or None}
        for s in registry.sources()
    }
    # NOTE [broken entries]: the files listing skips, each with what is wrong
    broken = [{"file": e.path, "problem": e.reason} for e in registry.broken_entries()]
    return {
        "torchbridge": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "torch": torch_info,
        "packages": packages,
        "julia": {
            "found": bool(julia_on_path or (julia_env and os.path.exists(julia_env))),
            "on_path": julia_on_path,
            "PYTHON_JULIAPKG_EXE": julia_env,
            "juliacall": packages.get("juliacall"),
        },
        "caches": {
            "torch_hub": str(paths.torch_hub_dir()),
            "torch_hub_checkpoints": str(paths.torch_hub_checkpoints_dir()),
            "huggingface_hub": str(paths.hf_hub_cache_dir()),
            "torchbridge_home": str(paths.torchbridge_home()),
            "local_models": str(paths.local_models_dir()),
        },
        "offline": {
            "offline": paths.is_offline(),
            "TORCHBRIDGE_OFFLINE": os.environ.get("TORCHBRIDGE_OFFLINE"),
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE"),
        },
        "sources": sources,
        "broken_entries": broken,
    }


def _cmd_doctor(args: argparse.Namespace) -> int:
    """Report the environment."""
    report = doctor_report()
    if args.json:
        _print_json(report)
        return 0
    from rich.table import Table

    table = Table(title=f"torchbridge {report['torchbridge']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("python", f"{report['python']['version']} ({report['python']['executable']})")
    t = report["torch"]
    cuda = "CUDA " + str(t.get("cuda_version")) if t.get("cuda_available") else "no CUDA device"
    table.add_row("torch", f"{t.get('version') or 'not installed'}, {cuda}")
    for name, ver in report["packages"].items():
        if name != "torch":
            table.add_row(name, ver or "not installed")
    j = report["julia"]
    table.add_row("julia", j["on_path"] or j["PYTHON_JULIAPKG_EXE"] or "not found")
    for name, folder in report["caches"].items():
        table.add_row(f"cache: {name}", folder)
    table.add_row("offline", "yes" if report["offline"]["offline"] else "no")
    for name, s in report["sources"].items():
        table.add_row(f"source: {name}", "available" if s["available"] else f"needs {s['needs']}")
    for broken in report["broken_entries"]:
        table.add_row("skipped entry", f"{broken['file']}: {broken['problem']}")
    _console().print(table)
    return 0
