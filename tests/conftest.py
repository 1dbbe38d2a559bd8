"""Shared fixtures: every test must leave no process behind.

``--mold`` runs the suite's task tests with every executor's children forked from a
mold (``forkpool.Mold.fork()``, made once the tests are collected, before any test
starts a thread) unless the test gives ``mold=`` or ``mp_context=`` itself. Tests
whose point is what a child inherits from the executor's process unpickled are
marked ``fork_only`` and skipped there.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import time

import pytest
from helpers import OwnServer, live_children, reap_zombies

import forkpool
from forkpool import ForkPerTaskExecutor

PR_SET_CHILD_SUBREAPER = 36


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--mold",
        action="store_true",
        help="fork every executor's children from one forkpool.Mold.fork() mold",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Adopt orphans: grandchildren whose parent died reparent to this process.

    That makes "no process left behind" checkable: anything a test started, at any
    depth, shows up as our child until it is gone.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


_SESSION_MOLD: list[forkpool.Mold] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """With --mold: fork the mold now, with every test module loaded and one thread."""
    if not session.config.getoption("--mold"):
        return
    mold = forkpool.Mold.fork()
    _SESSION_MOLD.append(mold)
    original = ForkPerTaskExecutor.__init__

    @functools.wraps(original)
    def in_mold(self, *args, **kwargs):
        mp_context = kwargs.get("mp_context", args[1] if len(args) > 1 else None)
        if kwargs.get("mold") is None and mp_context is None:
            kwargs["mold"] = mold
        original(self, *args, **kwargs)

    ForkPerTaskExecutor.__init__ = in_mold  # type: ignore[method-assign]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--mold"):
        return
    skip = pytest.mark.skip(reason="about a fork of the executor's own process (--mold)")
    for item in items:
        if item.get_closest_marker("fork_only"):
            item.add_marker(skip)


def pytest_unconfigure(config: pytest.Config) -> None:
    del config
    while _SESSION_MOLD:
        _SESSION_MOLD.pop().close()


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
