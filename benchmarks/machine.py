"""What the side-by-side benchmarks share: the machine they ran on, its busy CPU time, a ratio against its target,
latency percentiles."""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def machine() -> dict[str, Any]:
    memory = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model.group(1) if model else platform.processor(),
        "memory_gib": round(int(memory.group(1)) / (1 << 20), 1) if memory else None,
        "kernel": platform.release(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def cpu_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all cores, from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def ratio_line(label: str, value: float | None, target: float, better: str, width: int = 46) -> str:
    """``label  1.23x  (target >= 1.5x: NOT MET)``; ``better`` is "higher" or "lower"."""
    if value is None:
        return f"  {label:<{width}} n/a"
    met = value >= target if better == "higher" else value <= target
    sign = ">=" if better == "higher" else "<="
    return f"  {label:<{width}} {value:7.2f}x   (target {sign} {target:g}x: {'MET' if met else 'NOT MET'})"


@dataclass
class Latency:
    """Percentiles of request latencies, in milliseconds."""

    count: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        if not seconds:
            return cls()
        ms = np.array(seconds) * 1000
        return cls(len(ms), float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.max()))
