"""joblib's Parallel on forkpool: each batch in a fresh child, nothing pickled on the way in.

A model too big to pickle cheaply (here: a dict holding a lock, which cannot be
pickled at all) is read by every call, straight from the parent's memory.
"""

import os
import threading
import time

from joblib import Parallel, delayed, parallel_config

import forkpool.joblib  # noqa: F401 - registers the "forkpool" backend

MODEL = {"weights": list(range(1_000_000)), "lock": threading.Lock()}


def score(row: int) -> tuple[int, int, int]:
    return row, sum(MODEL["weights"][row::100_000]), os.getpid()


def main() -> None:
    started = time.perf_counter()
    with parallel_config(backend="forkpool", n_jobs=2, timeout=60):
        results = Parallel()(delayed(score)(row) for row in range(8))
    children = {pid for _, _, pid in results}
    print(
        f"8 rows scored in {len(children)} fresh children in {time.perf_counter() - started:.2f}s"
    )
    print("scores:", [total for _, total, _ in results][:4], "...")


if __name__ == "__main__":
    main()
