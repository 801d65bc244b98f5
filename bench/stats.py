"""Percentiles and the results file."""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def write(results: dict, summary: str) -> pathlib.Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        **results,
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary,
    }
    path = RESULTS / "latest.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
