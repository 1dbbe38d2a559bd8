"""Process pools side by side, run as its own program so that its ``__main__`` is known.

``bench.py`` runs this file in a fresh interpreter, twice:

- with a **minimal main module** (this file, which imports only what the pools need):
  what the pools themselves cost;
- with a **realistic main module** (``FORKPOOL_BENCH_MAIN=realistic``): this file also
  imports what an application's entry point typically does (numpy, redis-py, Celery
  with kombu, asyncio, logging.config, decimal, json), at the top, where a spawned
  or forkserver worker re-runs it.

A spawned worker imports the parent's ``__main__`` again, and a forkserver one is
forked from a server that imported it once, so their cost depends on that module;
a fork of the running process does not import anything. Measuring them inside the
bench's own process would charge them for the bench's imports (Celery, redis-py,
matplotlib's), which is neither case.

Prints one JSON object: tasks per second (median) for each contender, and the
seconds it took to import the main module's extra modules once.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any

import forkpool

if TYPE_CHECKING:
    from collections.abc import Callable

REALISTIC = os.environ.get("FORKPOOL_BENCH_MAIN") == "realistic"
_started = time.perf_counter()
if REALISTIC:
    # What a web or worker application's entry point commonly has imported.
    import asyncio  # noqa: F401
    import decimal  # noqa: F401
    import logging.config  # noqa: F401

    import celery  # noqa: F401
    import kombu  # noqa: F401
    import numpy as np  # noqa: F401
    import redis  # noqa: F401
EXTRA_IMPORT_S = time.perf_counter() - _started


def double(x: int) -> int:
    return x * 2


def run_executor(executor: concurrent.futures.Executor, n: int) -> list[int]:
    with executor:
        futures = [executor.submit(double, i) for i in range(n)]
        return [future.result() for future in futures]


def contenders(workers: int) -> dict[str, Callable[[int], list[int]]]:
    def ppe(method: str, **kwargs: Any) -> Callable[[int], list[int]]:
        return lambda n: run_executor(
            concurrent.futures.ProcessPoolExecutor(
                workers, multiprocessing.get_context(method), **kwargs
            ),
            n,
        )

    found: dict[str, Callable[[int], list[int]]] = {
        "forkpool": lambda n: run_executor(forkpool.ForkPerTaskExecutor(workers), n),
        "PPE max_tasks_per_child=1 (forkserver)": ppe("forkserver", max_tasks_per_child=1),
        "PPE max_tasks_per_child=1 (spawn)": ppe("spawn", max_tasks_per_child=1),
        "PPE reused workers (forkserver, 3.14's default)": ppe("forkserver"),
    }
    try:
        import pebble  # noqa: PLC0415 - optional contender

        def pebble_pool(n: int) -> list[int]:
            with pebble.ProcessPool(max_workers=workers, max_tasks=1) as pool:
                futures = [pool.schedule(double, args=(i,)) for i in range(n)]
                return [future.result() for future in futures]

        found["pebble ProcessPool(max_tasks=1)"] = pebble_pool
    except ImportError:
        pass
    return found


def measure(tasks: int, rounds: int, workers: int) -> dict[str, float]:
    """Tasks per second of each contender, interleaved round by round (medians)."""
    expected = [double(i) for i in range(tasks)]
    runs = contenders(workers)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            if run(tasks) != expected:
                msg = f"{name} returned wrong results"
                raise AssertionError(msg)
            times[name].append(time.perf_counter() - started)
    return {name: tasks / statistics.median(seconds) for name, seconds in times.items()}


def main() -> int:
    tasks, rounds, workers = (int(arg) for arg in sys.argv[1:4])
    # pebble's default context forks this (threaded) process; it warns each time.
    warnings.filterwarnings(
        "ignore", r"This process \(pid=\d+\) is multi-threaded", DeprecationWarning
    )
    rates = measure(tasks, rounds, workers)
    print(json.dumps({"tasks_per_s": rates, "extra_import_s": EXTRA_IMPORT_S}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
