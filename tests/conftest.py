"""Shared fixtures: every test must leave no process behind."""

from __future__ import annotations

import contextlib
import ctypes
import os
import time

import pytest
from helpers import OwnServer, live_children, reap_zombies

PR_SET_CHILD_SUBREAPER = 36


def pytest_configure(config: pytest.Config) -> None:
    """Adopt orphans: grandchildren whose parent died reparent to this process.

    That makes "no process left behind" checkable: anything a test started, at any
    depth, shows up as our child until it is gone.
    """
    del config
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Fail a test that leaves any descendant process running."""
    before = set(live_children())
    yield
    deadline = time.monotonic() + 10
    while True:
        reap_zombies()
        leftover = set(live_children()) - before
        if not leftover or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for pid in leftover:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    reap_zombies()
    assert not leftover, f"test left processes behind: {sorted(leftover)}"


def _redis_backends() -> list[str]:
    # The embedded Valkey always; the server named by FORKPOOL_TEST_REDIS_URL too
    # (CI points it at the machine's Redis 7), so both servers are covered.
    backends = ["valkey"]
    if os.environ.get("FORKPOOL_TEST_REDIS_URL"):
        backends.append("env")
    return backends


@pytest.fixture(name="redis_url", scope="session", params=_redis_backends())
def fixture_redis_url(request: pytest.FixtureRequest):
    """A URL of a real Redis-protocol server shared by the session's tests."""
    if request.param == "env":
        yield os.environ["FORKPOOL_TEST_REDIS_URL"]
        return
    server = OwnServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(name="prefix")
def fixture_prefix(redis_url):
    """A key prefix no other test uses; its keys are deleted afterwards."""
    import uuid  # noqa: PLC0415

    import redis  # noqa: PLC0415

    prefix = f"fptest-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(name="client")
def fixture_client(redis_url):
    """A plain client of the session's server."""
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(name="own_server")
def fixture_own_server():
    """A Valkey server of this test's own, which the test may kill and restart."""
    server = OwnServer()
    server.start()
    yield server
    server.stop()
