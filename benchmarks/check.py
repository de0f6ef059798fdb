"""Compare the last benchmark figures with the committed previous ones: `make bench-check`.

`make bench` and `make bench-julia` write `benchmarks/results.json` and
`benchmarks/julia/results.json`; `benchmarks/baseline.json` holds the figures
the last change was measured at (committed with it). Each figure that has a
direction (a ratio or an overhead: lower is better; a speed-up: higher is
better) is compared with its previous value, and one line is printed for each
that got worse by more than its noise band, so a change sees its cost.

    python benchmarks/check.py            # exit 1 when a figure regressed
    python benchmarks/check.py --update   # take the current figures as the new baseline

Figures are from one run on a shared machine: the noise bands below are what
repeated runs on an idle 2-core machine spread over, not guarantees.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = {
    "python": HERE / "results.json",
    "julia": HERE / "julia" / "results.json",
}
BASELINE = HERE / "baseline.json"

# figure -> (direction, relative noise band): "lower" or "higher" is better
FIGURES: dict[str, tuple[str, float]] = {
    # Python (benchmarks/run.py)
    "bridge_over_torch_resnet18": ("lower", 0.08),
    "overhead_us_tiny_mlp": ("lower", 0.30),
    "exchange_1GB_over_1KB": ("lower", 0.50),
    "train_step_over_torch": ("higher", 0.08),
    "hf_step_over_torch": ("higher", 0.08),
    "registry_search_ms": ("lower", 0.50),
    "onnx_import_step_over_torch_resnet18": ("lower", 0.08),
    "onnx_import_forward_over_ort_small": ("lower", 0.30),
    "bigmodels_lora_step_over_full_step": ("lower", 0.15),
    "bigmodels_load_rss_over_checkpoint": ("lower", 0.10),
    "bigmodels_weights_file_rss_over_checkpoint": ("lower", 0.10),
    # Julia (benchmarks/julia/run.jl)
    "julia:bridge_over_torch_resnet18": ("lower", 0.08),
    "julia:bridge_over_torch_resnet18_1thread": ("lower", 0.08),
    "julia:bridge_over_torch_cnn": ("lower", 0.08),
    "julia:bridge_over_torch_cnn_1thread": ("lower", 0.08),
    "julia:overhead_us_tiny_mlp": ("lower", 0.30),
    "julia:forward_overhead_us_tiny_mlp": ("lower", 0.30),
    "julia:torch_native_overhead_us_tiny_mlp": ("lower", 0.30),
    "julia:flux_over_torchbridge_cnn": ("higher", 0.15),
    "julia:first_gradient_s": ("lower", 0.20),
    "julia:lux_step_over_torchmodel_step": ("lower", 0.08),
    "julia:jvp_over_torch_func_jvp": ("lower", 0.20),
}


def flatten(results: dict, prefix: str = "") -> dict[str, float]:
    """Every numeric figure of a results file, suites flattened (`{"bridge": {"x": 1}}` -> x)."""
    out: dict[str, float] = {}
    for key, value in results.items():
        if key == "machine":
            continue
        if isinstance(value, dict):
            out.update(flatten(value, prefix))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + key] = float(value)
    return out


def current() -> dict[str, float]:
    figures: dict[str, float] = {}
    for language, path in RESULTS.items():
        if path.exists():
            prefix = "julia:" if language == "julia" else ""
            figures.update(flatten(json.loads(path.read_text()), prefix))
    return figures


def compare(previous: dict[str, float], now: dict[str, float]) -> list[str]:
    """One line per figure that got worse by more than its noise band."""
    lines = []
    for name, (direction, band) in FIGURES.items():
        if name not in previous or name not in now or previous[name] == 0:
            continue
        before, after = previous[name], now[name]
        change = (after - before) / abs(before)
        worse = change > band if direction == "lower" else change < -band
        if worse:
            lines.append(
                f"REGRESSION {name}: {before:.4g} -> {after:.4g} ({change:+.1%}; "
                f"{direction} is better, noise band ±{band:.0%})"
            )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--update", action="store_true", help="write the current figures as the baseline"
    )
    args = parser.parse_args(argv)
    now = current()
    if not now:
        print("bench-check: no results yet; run `make bench` and/or `make bench-julia` first")
        return 2
    if args.update:
        kept = {k: v for k, v in now.items() if k in FIGURES}
        BASELINE.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")
        print(f"bench-check: {len(kept)} figures written to {BASELINE}")
        return 0
    if not BASELINE.exists():
        print(f"bench-check: no baseline at {BASELINE}; run with --update to make one")
        return 2
    previous = json.loads(BASELINE.read_text())
    lines = compare(previous, now)
    compared = [k for k in FIGURES if k in previous and k in now]
    for line in lines:
        print(line)
    print(f"bench-check: {len(compared)} figures compared, {len(lines)} regressed")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
