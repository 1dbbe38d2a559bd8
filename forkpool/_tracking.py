"""Who tracks what: whether Redis is asked for, the host name, and each child's entry.

Nothing here imports redis-py. Importing it costs a process about 28 MiB of memory
(redis-py 8), which every fork then copies the page tables of and every exit tears
down: without Redis, forkpool leaves it unimported.
"""

from __future__ import annotations

import os
import socket
from typing import Final

import attrs

from forkpool import _procfs
from forkpool._entry import Keys, TaskEntry

HOST_ENV: Final = "FORKPOOL_HOST"
URL_ENV: Final = "FORKPOOL_REDIS_URL"


def redis_asked_for(value: object) -> object | None:
    """The ``redis=`` argument with the environment applied; None for no Redis.

    None reads ``FORKPOOL_REDIS_URL``; False means no Redis, whatever it says.
    Anything else is returned as given, for ``_redis.resolve_redis`` to check.
    """
    if value is False:
        return None
    if value is None:
        return os.environ.get(URL_ENV, "").strip() or None
    return value


def default_host() -> str:
    """``FORKPOOL_HOST`` if set and not blank, else the machine's host name."""
    return os.environ.get(HOST_ENV, "").strip() or socket.gethostname()


@attrs.frozen
class TrackingContext:
    """The constant part of every entry one executor writes."""

    keys: Keys
    executor_id: str
    facts: _procfs.LocalFacts
    parent_pid: int
    parent_start: int

    @classmethod
    def create(cls, keys: Keys, executor_id: str) -> TrackingContext:
        """The context of this process."""
        pid = os.getpid()
        return cls(
            keys=keys,
            executor_id=executor_id,
            facts=_procfs.LocalFacts.current(),
            parent_pid=pid,
            parent_start=_procfs.start_ticks(pid) or 0,
        )

    def entry_for(self, child: Forked, pid_start: int) -> TaskEntry:
        """The full entry of a forked child whose start time has been read."""
        return TaskEntry(
            task_id=child.task_id,
            host=self.keys.host,
            pid=child.pid,
            pid_start=pid_start,
            boot_id=self.facts.boot_id,
            pidns=self.facts.pidns,
            pgid=child.pid,
            parent_pid=self.parent_pid,
            parent_start=self.parent_start,
            executor_id=self.executor_id,
            name=child.name,
            started=child.started,
            deadline=None if child.timeout is None else child.started + child.timeout,
            ttl=child.ttl,
        )


@attrs.define
class Forked:
    """What the supervisor knows of a child the moment it forks it (cheap to make)."""

    task_id: str
    pid: int
    name: str
    started: float
    timeout: float | None
    ttl: float
