"""A Dramatiq actor for tests/test_hosts.py: a forkpool task under a 2 s time limit.

The worker runs it with FORKPOOL_TEST_BROKER set to a Redis URL; the actor records
in Redis when the time limit reached it and which child ran the task.
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import TimeLimitExceeded

import forkpool

BROKER_URL = os.environ["FORKPOOL_TEST_BROKER"]
dramatiq.set_broker(RedisBroker(url=BROKER_URL))
EXECUTOR = forkpool.PerProcessExecutor(1)


@dramatiq.actor(time_limit=2000, max_retries=0)
def blocking_task(report_key: str) -> None:
    """Waits on a forkpool task that would take 30 s; the time limit must cut in."""
    client = redis.Redis.from_url(BROKER_URL)
    started = time.monotonic()
    future = EXECUTOR.submit(time.sleep, 30)
    while future.pid is None:
        time.sleep(0.01)
    client.hset(report_key, "child", future.pid)
    try:
        future.result()
    except TimeLimitExceeded:
        client.hset(report_key, "limited_after", time.monotonic() - started)
        raise
