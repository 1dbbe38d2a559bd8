"""The mold's measurements, in a program that imports forkpool and nothing else.

``bench.py`` runs this file in a fresh interpreter. A mold is a copy of the process
as it was when made, and the bare fork loop forks the process it runs in: inside
the bench's own process both would carry the bench's imports (Celery, redis-py,
prometheus_client: about 480 modules and 40 MiB of heap), which is neither a small
parent nor a mold made early. Here the parent imports forkpool, makes its mold
first, as the README says to, and then grows only where a measurement makes it:

- throughput of a small parent: the bare fork loop, forkpool, forkpool + mold;
- latency, one task at a time, as the parent grows (every page of the ballast
  touched); the mold was made before it grew.

Prints one JSON object.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from basics import bare_fork_loop, double, interleaved, run_executor

import forkpool

MIB = 1 << 20


def measure_throughput(
    tasks: int, rounds: int, workers: int, mold: forkpool.Mold
) -> dict[str, float]:
    """Tasks per second (median of the rounds) of the floor, forkpool, forkpool + mold."""
    expected = [double(i) for i in range(tasks)]
    runs = {
        "bare fork loop": lambda: bare_fork_loop(tasks, workers),
        "forkpool": lambda: run_executor(forkpool.ForkPerTaskExecutor(workers), tasks),
        "forkpool + mold": lambda: run_executor(
            forkpool.ForkPerTaskExecutor(workers, mold=mold), tasks
        ),
    }

    def checked(name: str) -> None:
        if runs[name]() != expected:
            msg = f"{name} returned wrong results"
            raise AssertionError(msg)

    times = interleaved({name: functools.partial(checked, name) for name in runs}, rounds)
    return {name: tasks / statistics.median(seconds) for name, seconds in times.items()}


def measure_parent_size(
    sizes_mib: list[int], tasks: int, rounds: int, mold: forkpool.Mold
) -> dict[int, dict[str, float]]:
    """Seconds per task, one at a time, as the parent grows; the mold was made before."""
    out: dict[int, dict[str, float]] = {}
    for size in sizes_mib:
        ballast = bytearray(size * MIB)
        ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page
        with (
            forkpool.ForkPerTaskExecutor(1) as ex,
            forkpool.ForkPerTaskExecutor(1, mold=mold) as in_mold,
        ):
            ex.submit(double, 1).result()
            in_mold.submit(double, 1).result()

            def latency(ex: forkpool.ForkPerTaskExecutor = ex) -> None:
                for i in range(tasks):
                    if ex.submit(double, i).result() != double(i):
                        msg = "forkpool returned a wrong result"
                        raise AssertionError(msg)

            def bare_latency() -> None:
                for _ in range(tasks):
                    if bare_fork_loop(1, 1) != [0]:
                        msg = "the bare loop returned a wrong result"
                        raise AssertionError(msg)

            times = interleaved(
                {
                    "forkpool": latency,
                    "forkpool + mold": functools.partial(latency, in_mold),
                    "bare fork loop": bare_latency,
                },
                rounds,
            )
        out[size] = {name: statistics.median(s) / tasks for name, s in times.items()}
        del ballast
    return out


def main() -> int:
    smoke = "--smoke" in sys.argv
    with forkpool.Mold.fork() as mold:  # first: one thread, nothing but forkpool loaded
        results = {
            "modules_loaded": len(sys.modules),
            "throughput_tasks_per_s": measure_throughput(
                tasks=6 if smoke else 300, rounds=1 if smoke else 11, workers=2, mold=mold
            ),
            "latency_s_by_parent_mib": measure_parent_size(
                [0, 64] if smoke else [0, 512, 2048],
                tasks=3 if smoke else 30,
                rounds=1 if smoke else 5,
                mold=mold,
            ),
        }
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
