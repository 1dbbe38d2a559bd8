"""An ASGI app for tests/test_hosts.py, run by a real uvicorn.

Each request starts a 4 s forkpool task and answers at once with its child's pid;
FORKPOOL_TEST_CLOSE_FDS=1 turns close_fds on.
"""

from __future__ import annotations

import asyncio
import os
import time

import forkpool

EXECUTOR = forkpool.PerProcessExecutor(
    1, close_fds=os.environ.get("FORKPOOL_TEST_CLOSE_FDS") == "1"
)
STARTED: list[forkpool.ForkFuture[None]] = []


def nap(seconds: float) -> None:
    time.sleep(seconds)


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    future = EXECUTOR.submit(nap, 4)
    # Forked within milliseconds: polling is simpler than an Event set across threads.
    while future.pid is None:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    STARTED.append(future)
    body = str(future.pid).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
