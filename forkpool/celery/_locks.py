"""kombu's ``cached_property`` locks, made new in each child forked from a worker.

kombu's ``cached_property`` takes a lock of its own (an ``RLock`` per attribute, kept
on the descriptor) on every access: ``RedisBackend.client``, a Redis channel's
``client``, a connection's ``transport``... A fork copies such a lock as it is at
that instant. If another thread of the worker held it then, the child waits on it
forever the first time it touches that attribute, usually when it stores its
result: the thread that would release it does not exist in the child.

A mold has no other thread, so its children are safe. A child forked from the
worker process itself (``forkpool_fork_from = "worker"``, or an app a fresh
interpreter cannot import, such as the one Celery's pytest plugin makes) gets
every such lock made new before its task runs, as CPython does for its own locks
after a fork. The descriptors are found in the parent, before a fork: once, and
again whenever the process has imported modules since (new classes may bring new
descriptors); the child only replaces their locks, a few microseconds.
"""

from __future__ import annotations

import gc
import sys
import threading
from typing import Any

from kombu.utils.objects import cached_property

# Per process: the worker's descriptors, as last found. A child inherits them.
_descriptors: list[Any] = []
_modules_when_found = -1
_finding = threading.Lock()


def find() -> None:
    """In the forking process, before a fork: know every descriptor that exists now.

    Called before each fork; it looks again only when ``sys.modules`` has changed
    size since it last looked, so it costs a length check on all other forks.
    """
    global _descriptors, _modules_when_found  # noqa: PLW0603 - a fact about this process
    modules = len(sys.modules)
    if modules == _modules_when_found:
        return
    with _finding:
        if modules == _modules_when_found:
            return
        _descriptors = [obj for obj in gc.get_objects() if isinstance(obj, cached_property)]
        _modules_when_found = modules


def find_before_fork(fn: object, args: object, kwargs: object) -> None:
    """:func:`find` as a ``parent_pre_fork`` hook."""
    del fn, args, kwargs
    find()


def renew() -> None:
    """In a fresh child, before anything touches them: every known lock made new."""
    for descriptor in _descriptors:
        descriptor.lock = threading.RLock()
