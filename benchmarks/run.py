"""Run every benchmark once and report the figures: `python benchmarks/run.py --json PATH`.

The figures are ratios and differences measured in one run on this machine
(bridge vs plain torch, zero-copy vs copy); they are reports, not pass/fail
tests. Targets are printed beside the figures they apply to.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCHBRIDGE_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

# suite name -> module with run() -> dict
SUITES = {
    "bridge": "bench_bridge",
    "registry": "bench_registry",
    "train": "bench_train",
    "hf": "bench_hf",
    "distributed": "bench_distributed",
    "bigmodels": "bench_bigmodels",
    "onnx": "bench_onnx",
}

# key -> (comparison, target) for the figures the project has targets for
TARGETS = {
    "bridge_over_torch_resnet18": ("<=", 1.03),
    "exchange_1GB_over_1KB": ("<=", 2.0),
    "overhead_us_tiny_mlp": ("<=", 30.0),
    "memory_ledger_at_baseline": ("==", True),
    "registry_list_s": ("<", 0.2),
    "registry_search_ms": ("<", 50.0),
    "train_step_over_torch": (">=", 0.97),
    "hf_step_over_torch": (">=", 0.97),
    "hf_list_and_search_ms": ("<=", 50.0),
    "hf_ledger_at_baseline": ("==", True),
    "bigmodels_load_rss_over_checkpoint": ("<=", 1.3),
    "bigmodels_weights_file_rss_over_checkpoint": ("<=", 1.3),
    "onnx_import_step_over_torch_resnet18": ("<=", 1.05),
    "onnx_import_forward_over_ort_small": ("<=", 2.0),
}


def _meets(value, comparison, target) -> bool:
    return {
        "<=": value <= target,
        "<": value < target,
        ">=": value >= target,
        "==": value == target,
    }[comparison]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--only", nargs="*", choices=sorted(SUITES), help="run only these suites")
    args = parser.parse_args(argv)

    import torch

    results: dict = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        }
    }
    for suite in args.only or SUITES:
        module_name = SUITES[suite]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            print(f"skipping {suite}: {exc}", file=sys.stderr)
            continue
        start = time.perf_counter()
        results[suite] = module.run()
        results[suite]["suite_seconds"] = time.perf_counter() - start

    _print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


def _print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="torchbridge benchmarks (one run, this machine)")
    table.add_column("suite")
    table.add_column("figure", no_wrap=True)
    table.add_column("value", justify="right", overflow="fold")
    table.add_column("target")
    for suite, figures in results.items():
        if suite == "machine":
            continue
        for key, value in figures.items():
            target = ""
            if key in TARGETS:
                comparison, goal = TARGETS[key]
                mark = "met" if _meets(value, comparison, goal) else "MISSED"
                target = f"{comparison} {goal}  {mark}"
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            table.add_row(suite, key, shown, target)
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
