"""Shared fixtures: every test must leave no process behind."""

from __future__ import annotations

import contextlib
import ctypes
import os
import time

import pytest
from helpers import live_children, reap_zombies

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
