"""Progress from a running child: ``report_progress`` in the task, a bar in the parent.

Run it with ``python examples/progress_bar.py``.
"""

from __future__ import annotations

import sys
import time

import forkpool
from forkpool import ForkFuture, ForkPerTaskExecutor


def index_documents(count: int) -> int:
    """Process documents one by one, reporting how far along the task is."""
    for done in range(1, count + 1):
        time.sleep(0.01)  # the real work would go here
        forkpool.report_progress(done / count)
    return count


def draw(future: ForkFuture[int], fraction: float) -> None:
    """Progress callback: runs in the parent for every value the child reports."""
    width = 40
    filled = int(width * fraction)
    bar = f"  child {future.pid}: [{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}"
    if sys.stdout.isatty():
        sys.stdout.write("\r" + bar)  # redraw in place
        sys.stdout.flush()
    elif round(fraction * 150) % 50 == 0:  # in a log, a line per third is enough
        print(bar)


def main() -> None:
    with ForkPerTaskExecutor(max_workers=1) as ex:
        future = ex.submit(index_documents, 150)
        future.add_progress_callback(draw)
        indexed = future.result()
    print(f"\n  indexed {indexed} documents; last progress value was {future.progress:.0%}")
    print(f"  the child used {future.rusage}")


if __name__ == "__main__":
    main()
