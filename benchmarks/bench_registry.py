"""Benchmarks of the model registry: listing every model, and free-text search.

- ``registry_list_first_s``: the first ``list_models()`` in a fresh Python
  process, which imports timm and torchvision and builds every entry;
- ``registry_list_s``: a repeated ``list_models()`` (median), the figure with a
  target (< 0.2 s);
- ``registry_search_ms``: one ``search_models()`` query on a warm registry
  (median over several queries), target < 50 ms.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from timing import median_time

QUERIES = (
    "tiny vision transformer",
    "efficientnet b0 imagenet",
    "resnet50",
    "object detection",
    "mobilenet",
)

_FIRST_LIST = """
import json, time
start = time.perf_counter()
import torchbridge
entries = torchbridge.list_models()
print(json.dumps({"seconds": time.perf_counter() - start, "count": len(entries)}))
"""


def first_list() -> dict:
    """Seconds of the first list_models() in a new process (imports included)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCHBRIDGE_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_LIST], env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run() -> dict:
    """run() -> dict: the registry figures (see the module docstring)."""
    import torchbridge

    first = first_list()
    torchbridge.list_models()  # warm this process
    torchbridge.search_models(QUERIES[0])
    timm_count = len(torchbridge.list_models(source="timm"))
    list_s = median_time(torchbridge.list_models, reps=7)
    search_s = statistics.median(
        median_time(lambda q=q: torchbridge.search_models(q), reps=5) for q in QUERIES
    )
    return {
        "registry_list_first_s": round(first["seconds"], 3),
        "registry_list_s": round(list_s, 4),
        "registry_search_ms": round(search_s * 1000, 2),
        "registry_models": first["count"],
        "registry_timm_models": timm_count,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
