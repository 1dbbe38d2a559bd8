"""Run by celery_bench.py in a fresh interpreter: the floor of a fresh process per Celery task.

``python celery_floor.py URL TASKS ROUNDS`` loads tests/celery_app.py with URL as its
result backend, sets the app up as ForkPool's mold does (the same ``prepare``, its
objects made immortal and frozen), then forks TASKS children two at a time, as a
``-c 2`` worker runs them, each reaped when it is done, in two ways:

- ``fork, exit``: the child sends back ``None`` and exits;
- ``fork, store result, exit``: the child stores a result through the app's backend,
  on a connection of its own (a fork cannot share its parent's), as every task's
  child of a pool that forks per task must.

No broker, no message, no tracer, no pool: what any design that runs each task in a
fresh process, storing its own result, pays before it does anything else. Prints
one JSON object: milliseconds per task, median of the rounds.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import statistics
import sys
import uuid
from pathlib import Path

from basics import bare_fork_loop, interleaved

TESTS = Path(__file__).resolve().parent.parent
WORKERS = 2


def main() -> None:
    url, tasks, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.environ["FORKPOOL_TEST_BROKER"] = url
    os.environ["FORKPOOL_TEST_BACKEND"] = url
    sys.path.insert(0, str(TESTS))
    from forkpool import _immortal  # noqa: PLC0415 - after the app's environment is set
    from forkpool.celery import _mold  # noqa: PLC0415

    _mold.prepare("celery_app", "app", None)
    from celery_app import app  # noqa: PLC0415 - imported by prepare

    gc.collect()
    _immortal.make_everything_immortal()
    gc.freeze()
    prefix = f"forkpool-floor-{uuid.uuid4().hex[:8]}"

    def store(index: int) -> None:
        app.backend.store_result(f"{prefix}-{index}", None, "SUCCESS")

    cases = {"fork, exit": lambda index: None, "fork, store result, exit": store}
    seconds = interleaved(
        {
            name: functools.partial(bare_fork_loop, tasks, WORKERS, work)
            for name, work in cases.items()
        },
        rounds,
    )
    print(
        json.dumps(
            {name: statistics.median(times) / tasks * 1000 for name, times in seconds.items()}
        )
    )


if __name__ == "__main__":
    main()
