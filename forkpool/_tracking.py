"""Who tracks what: the host name, and the entry the supervisor writes per child."""

from __future__ import annotations

import os
import socket
from typing import Final

import attrs

from forkpool import _procfs
from forkpool._entry import Keys, TaskEntry

HOST_ENV: Final = "FORKPOOL_HOST"


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
