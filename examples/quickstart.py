"""Quick start: every task in a fresh child, lambdas welcome, crashes contained.

Run it with ``python examples/quickstart.py``.
"""

from __future__ import annotations

import os
import threading

import forkpool
from forkpool import ChildDiedError, ForkPerTaskExecutor, TaskTimeoutError


def heavy(n: int) -> tuple[int, int]:
    """Build something big; its memory goes back to the OS when the child exits."""
    blob = [str(i) for i in range(n)]
    return os.getpid(), len(blob)


@forkpool.options(timeout=0.5)
def too_slow() -> None:
    """Outlives its per-callable timeout and is stopped."""
    threading.Event().wait(30)


def main() -> None:
    lock = threading.Lock()  # unpicklable, yet fine as an argument: children inherit it
    with ForkPerTaskExecutor(max_workers=2) as ex:
        for pid, size in ex.map(heavy, [200_000, 400_000, 800_000]):
            print(f"child {pid} built {size:,} strings")

        print("a lambda using a lock:", ex.submit(lambda lk: lk.locked(), lock).result())

        crash = ex.submit(os._exit, 3)
        try:
            crash.result()
        except ChildDiedError as exc:
            print("contained:", exc)

        try:
            ex.submit(too_slow).result()
        except TaskTimeoutError as exc:
            print("stopped:", exc)

        print("still working:", ex.submit(pow, 2, 10).result())


if __name__ == "__main__":
    main()
