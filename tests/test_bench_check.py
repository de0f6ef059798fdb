"""The benchmark check reports a figure that got worse beyond its noise, and only that."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench_check", Path(__file__).parent.parent / "benchmarks" / "check.py"
)
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def test_a_worse_ratio_beyond_noise_is_reported():
    """A lower-is-better ratio up 20% (band 8%) is one regression line naming it."""
    lines = check.compare(
        {"bridge_over_torch_resnet18": 1.0, "train_step_over_torch": 1.0},
        {"bridge_over_torch_resnet18": 1.2, "train_step_over_torch": 1.05},
    )
    assert len(lines) == 1 and "bridge_over_torch_resnet18" in lines[0] and "+20.0%" in lines[0]


def test_noise_and_improvements_are_not_reported():
    """Changes inside the band, and improvements of any size, print nothing."""
    assert (
        check.compare(
            {"bridge_over_torch_resnet18": 1.0, "hf_step_over_torch": 1.0},
            {"bridge_over_torch_resnet18": 1.05, "hf_step_over_torch": 1.5},
        )
        == []
    )


def test_higher_is_better_figures_regress_downwards():
    """A speed-up figure that falls beyond its band is a regression."""
    lines = check.compare(
        {"julia:flux_over_torchbridge_cnn": 7.0}, {"julia:flux_over_torchbridge_cnn": 5.0}
    )
    assert len(lines) == 1 and "julia:flux_over_torchbridge_cnn" in lines[0]


def test_results_files_flatten_by_suite():
    """Suites nest figures; the machine block and booleans are not figures."""
    flat = check.flatten({"machine": {"cpus": 2}, "bridge": {"x": 1.5, "ok": True}})
    assert flat == {"x": 1.5}


def test_every_figure_checked_is_one_a_benchmark_writes():
    """Each figure the check compares is a key some benchmark writes (a renamed figure
    would otherwise go unchecked without a word)."""
    root = Path(__file__).parent.parent / "benchmarks"
    python = "".join(p.read_text() for p in root.glob("*.py") if p.name != "check.py")
    julia = (root / "julia" / "run.jl").read_text()
    for name in check.FIGURES:
        source, key = (
            (julia, name.removeprefix("julia:")) if name.startswith("julia:") else (python, name)
        )
        assert f'"{key}"' in source, f"no benchmark writes {name}"
