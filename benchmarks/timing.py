"""The one timing helper the benchmark suites share."""

from __future__ import annotations

import statistics
import time


def median_time(fn, reps: int) -> float:
    """median_time(fn, reps) -> seconds: the median wall time of ``reps`` calls of ``fn()``."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
