"""Throughput measurement shared by the simulator benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def per_second(fn: Callable[[], object], n_items: int, repeats: int) -> tuple[float, float]:
    """Median throughput over ``repeats`` timed calls after one warm-up call.

    Returns:
        ``(items per wall-clock second, items per CPU second of this process)``; the second is robust
        to other processes sharing the cores.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return n_items / statistics.median(wall), n_items / statistics.median(cpu)
