"""The ledger under the garbage collector: it never waits on itself, and still counts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PYTHON_DIR = Path(__file__).resolve().parent.parent / "python"

# A pullback caught in a reference cycle is freed by the collector; a threshold
# of 2 makes a collection run inside stats() while it sums, on the same thread.
CYCLES_UNDER_STATS = textwrap.dedent(
    """
    import gc
    import torch
    import torchbridge
    from torchbridge import memory

    model = torchbridge.bridge(torch.nn.Linear(4, 2))
    gc.set_threshold(2, 1, 1)
    for _ in range(2000):
        _, pullback = model.forward(torch.randn(3, 4))
        cycle = [pullback]
        cycle.append(cycle)
        del pullback, cycle
        memory.stats()
    gc.collect()
    stats = memory.stats()
    print(stats.live_pullbacks, stats.released_by_gc)
    """
)


def test_stats_with_collections_inside_never_deadlocks():
    """2,000 pullbacks freed by collections that run inside stats() finish, all counted as released_by_gc."""
    run = subprocess.run(
        [sys.executable, "-c", CYCLES_UNDER_STATS],
        capture_output=True,
        text=True,
        timeout=60,  # the watchdog: a deadlock never returns
        env={"PYTHONPATH": str(PYTHON_DIR), "PATH": ""},
    )
    assert run.returncode == 0, run.stderr
    live, by_gc = map(int, run.stdout.split())
    assert live == 0
    assert by_gc == 2000
