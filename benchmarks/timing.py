"""Interleaved timing: contenders take turns, so load from other processes hits them all alike.

On a shared 2-core machine a contender timed alone can be slowed by a neighbour's burst that the
next one never sees. Here every repeat runs each contender once (in rotated order) and ratios are
taken per repeat, then the median: a ratio measured side by side.
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int, inner: int = 1,
                warmup: int = 1, cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Wall seconds per call for each contender, one sample per repeat (each the mean of `inner`
    calls). If `cpu` is given it receives this process's CPU seconds per call alongside: with one
    thread that is the time the work took when it ran, whatever other processes did meanwhile."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        if cpu is not None:
            cpu[name] = []
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(inner):
                contenders[name]()
            samples[name].append((time.perf_counter() - start) / inner)
            if cpu is not None:
                cpu[name].append((time.process_time() - start_cpu) / inner)
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(samples: dict[str, list[float]], top: str, bottom: str) -> float:
    """Median over repeats of top/bottom, each pair timed back to back."""
    return statistics.median(a / b for a, b in zip(samples[top], samples[bottom]))


def spread(values: list[float]) -> float:
    """(max - min) / median: how noisy one contender's repeats were."""
    return (max(values) - min(values)) / statistics.median(values)


def machine_line() -> str:
    """Where and when: date, CPU count, torch threads, load average (contention from others)."""
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    torch = sys.modules.get("torch")  # not imported here: shard workers must not pay for it
    threads = f"torch={torch.__version__} threads={torch.get_num_threads()} " if torch else ""
    return f"{datetime.date.today()} {platform.node()} cpus={os.cpu_count()} {threads}load(1/5/15m)={load}"
