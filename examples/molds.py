"""Tasks forked from a mold: a small single-threaded process, made before the app grows.

The application here holds 512 MiB and runs a few threads of its own, as a server
would. Forking it for every task would copy the page tables of all that memory, and
whatever locks those threads hold; the mold, forked first thing, stays small and
has one thread. Run: python examples/molds.py
"""

from __future__ import annotations

import os
import threading
import time

import forkpool

# First thing, while the program is small and has one thread.
MOLD = forkpool.Mold.fork()


def checksum(n: int) -> tuple[int, int]:
    """A task: its own pid and a little work."""
    return os.getpid(), sum(i * i for i in range(n)) % 9973


def main() -> None:
    ballast = bytearray(512 << 20)  # the application grows...
    for page in range(0, len(ballast), 4096):
        ballast[page] = 1  # ...and touches its memory
    stop = threading.Event()
    workers = [threading.Thread(target=stop.wait, name=f"app-{n}") for n in range(4)]
    for worker in workers:
        worker.start()
    try:
        for label, kwargs in (("mold", {"mold": MOLD}), ("fork of this process", {})):
            with forkpool.ForkPerTaskExecutor(max_workers=2, **kwargs) as ex:
                started = time.perf_counter()
                results = list(ex.map(checksum, [10_000] * 40))
                elapsed = time.perf_counter() - started
            print(
                f"{label:>22}: 40 tasks in {elapsed * 1000:.0f} ms "
                f"({elapsed / 40 * 1000:.2f} ms each), {len({pid for pid, _ in results})} children"
            )
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        MOLD.close()
    del ballast


if __name__ == "__main__":
    main()
