"""The reaper's rules: which tracked children to stop, which entries to remove.

Everything is decided from the local kernel, never from Redis alone:

* An entry is only ever acted on by a reaper on the same host, same boot and same
  pid namespace. Entries of other hosts are deleted as metadata only, and only once
  that host's own announced lease (its score in the hosts index) has passed.
* A child whose recorded parent is alive is never signalled, whatever its lease
  says: the owner enforces timeouts and renews leases; an expired lease with a live
  parent means the owner is slow or cut off from Redis, and is only logged.
* A child the kernel says is still supervised is never signalled either, whatever
  its entry says (see :func:`supervisor_of`): an entry edited to name a dead parent
  must not get a live task killed. A task forked by a mold counts as supervised
  while that mold lives.
* When the recorded parent is dead, the members of the child's process group that
  prove to be the task's (see :func:`_open_verified`) are stopped -- SIGTERM, then
  SIGKILL after the grace -- and the entry is deleted.

A forged entry therefore cannot make a reaper signal a stranger: the stranger does
not carry the task's marker, and the marker is checked through a pidfd opened
before the check, so a pid recycled mid-check is never the one signalled.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Final, cast

import attrs
import redis

from forkpool import _kill_marks, _linux, _procfs
from forkpool._entry import Keys, MalformedEntryError, TaskEntry
from forkpool._procfs import LocalFacts
from forkpool._redis import client_from_url, per_host_pipeline
from forkpool._tracking import default_host

if TYPE_CHECKING:
    from forkpool._redis import Client

logger = logging.getLogger("forkpool.reaper")

_GONE: Final = ("Z", "X")


@attrs.define
class Stopper:
    """Signals verified processes: SIGTERM now, SIGKILL once the grace has passed."""

    grace: float
    _pending: list[tuple[float, list[int]]] = attrs.field(factory=list)

    def stop(self, targets: list[int], signum: int = signal.SIGTERM) -> None:
        """Signal ``targets`` (pidfds, or pids without pidfd support); take ownership."""
        for target in targets:
            _linux.send_signal(target, signum)
        if signum == signal.SIGKILL or self.grace <= 0:
            if signum != signal.SIGKILL:
                for target in targets:
                    _linux.send_signal(target, signal.SIGKILL)
            _linux.close_handles(targets)
        else:
            self._pending.append((time.monotonic() + self.grace, targets))

    def release(self, targets: list[int]) -> None:
        """Let go of targets without signalling them."""
        _linux.close_handles(targets)

    def next_deadline(self) -> float | None:
        """When the earliest SIGKILL is due (monotonic), if any."""
        return min((deadline for deadline, _ in self._pending), default=None)

    def escalate(self, *, now: float | None = None, force: bool = False) -> None:
        """Send SIGKILL to the targets whose grace has passed (all of them if forced)."""
        now = time.monotonic() if now is None else now
        due = [entry for entry in self._pending if force or entry[0] <= now]
        for entry in due:
            self._pending.remove(entry)
            for target in entry[1]:
                _linux.send_signal(target, signal.SIGKILL)
            _linux.close_handles(entry[1])


def _open_verified(pid: int, entry: TaskEntry, facts: LocalFacts, *, leader: bool) -> int | None:
    """A handle to ``pid`` if it provably belongs to ``entry``'s task, else None.

    The pidfd is opened *before* the checks: if the pid is recycled mid-check, the
    checks see the newcomer but the pidfd still names the original (now dead)
    process, and signalling it does nothing.
    """
    handle = _linux.open_handle(pid)
    if handle is None:
        return None
    stat = _procfs.read_stat(pid)
    proven = (
        stat is not None
        and stat.state not in _GONE
        and stat.pgrp == entry.pgid
        and (stat.start_ticks == entry.pid_start if leader else stat.start_ticks >= entry.pid_start)
        and _procfs.owner_uid(pid) == facts.uid
        and _procfs.pid_namespace(pid) == facts.pidns
        and _procfs.carries_task_marker(pid, stat, entry.task_id)
    )
    if not proven:
        _linux.close_handles([handle])
        return None
    return handle


def task_processes(entry: TaskEntry, facts: LocalFacts) -> tuple[bool, list[int]]:
    """Open every live process of the entry's task: (child itself found, handles).

    Only members of the child's process group that carry the task's marker and
    started no earlier than the child qualify; the child must match its recorded
    start time exactly.
    """
    handles: list[int] = []
    leader = _open_verified(entry.pid, entry, facts, leader=True)
    if leader is not None:
        handles.append(leader)
    for pid in _procfs.all_pids():
        if pid == entry.pid:
            continue
        stat = _procfs.read_stat(pid)
        if stat is None or stat.pgrp != entry.pgid:
            continue
        handle = _open_verified(pid, entry, facts, leader=False)
        if handle is not None:
            handles.append(handle)
    return leader is not None, handles


def same_context(entry: TaskEntry, facts: LocalFacts) -> bool:
    """The entry was written on this boot, in this pid namespace."""
    return entry.boot_id == facts.boot_id and entry.pidns == facts.pidns


def parent_alive(entry: TaskEntry) -> bool:
    """The recorded parent still runs (same pid, same start time)."""
    stat = _procfs.read_stat(entry.parent_pid)
    return stat is not None and stat.state not in _GONE and stat.start_ticks == entry.parent_start


def supervisor_of(entry: TaskEntry, facts: LocalFacts) -> int | None:
    """The live process that, by the kernel, still supervises the entry's child, if any.

    The child's real parent is the kernel's ``PPid``, not what the entry records.
    When a parent dies its children are re-parented at once, to init or a subreaper,
    which holds no pidfd for them. So the child is still supervised if its kernel
    parent is the recorded one, or holds a pidfd for it -- or might (its
    descriptors cannot be read, yet it runs as our user, as any executor of ours
    does). None: orphaned, or the child itself is gone.
    """
    stat = _procfs.read_stat(entry.pid)
    if stat is None or stat.state in _GONE or stat.start_ticks != entry.pid_start:
        return None
    parent = stat.ppid
    if parent == entry.parent_pid:
        return parent
    if _procfs.owner_uid(parent) != facts.uid:
        return None  # not an executor of ours: an adoptive init or subreaper
    if _is_live_mold(parent):
        return parent  # it reaps only when its executor asks, and dies with it
    return None if _procfs.holds_pidfd_of(parent, entry.pid) is False else parent


def _log_extra(entry: TaskEntry) -> dict[str, object]:
    """What a log line about the entry's task carries in ``extra`` (as the supervisor's do)."""
    return {"task_id": entry.task_id, "pid": entry.pid, "callable": entry.name}


def _is_live_mold(pid: int) -> bool:
    """A mold forked the child: the executor that made the mold supervises it.

    A mold lives exactly as long as the process that made it (its socket's end of
    file ends it), and forks only for that process's executors.
    """
    stat = _procfs.read_stat(pid)
    return stat is not None and stat.state not in _GONE and stat.comm == _procfs.MOLD_COMM


@attrs.frozen
class Entries:
    """One host's entries as read from Redis in one transaction."""

    valid: dict[str, tuple[TaskEntry, float]]
    malformed: dict[str, str]


def read_entries(client: Client, keys: Keys) -> Entries:
    """Read a host's meta hash and active set atomically; sort out the malformed."""
    pipe = per_host_pipeline(client)
    pipe.hgetall(keys.meta)
    pipe.zrange(keys.active, 0, -1, withscores=True)
    raw_meta, raw_active = pipe.execute()
    leases = {_text(member): float(score) for member, score in raw_active}
    valid: dict[str, tuple[TaskEntry, float]] = {}
    malformed: dict[str, str] = {}
    for raw_id, raw_value in raw_meta.items():
        task_id = _text(raw_id)
        try:
            entry = TaskEntry.from_json(raw_value, task_id)
        except MalformedEntryError as exc:
            malformed[task_id] = str(exc)
            continue
        if entry.host != keys.host:
            malformed[task_id] = f"names host {entry.host!r}, stored under {keys.host!r}"
        elif task_id not in leases:
            malformed[task_id] = "metadata without a lease in the active set"
        else:
            valid[task_id] = (entry, leases[task_id])
    for task_id in leases.keys() - {_text(raw_id) for raw_id in raw_meta}:
        malformed[task_id] = "a lease without metadata"
    return Entries(valid, malformed)


def delete_entries(client: Client, keys: Keys, task_ids: list[str]) -> None:
    """Remove entries from a host's active set and meta hash."""
    if not task_ids:
        return
    pipe = per_host_pipeline(client)
    pipe.zrem(keys.active, *task_ids)
    pipe.hdel(keys.meta, *task_ids)
    pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


@attrs.define
class ReapReport:
    """What one reaper cycle did."""

    stopped: list[TaskEntry] = attrs.field(factory=list)
    orphans_stopped: int = 0
    removed: list[str] = attrs.field(factory=list)
    malformed: dict[str, str] = attrs.field(factory=dict)
    stale_hosts: list[str] = attrs.field(factory=list)


@attrs.define
class Reaper:
    """Applies the rules in the module docstring to one host's entries."""

    keys: Keys
    facts: LocalFacts
    stopper: Stopper
    owner_id: str | None = None
    cycles: int = 0
    _warned_expired: set[str] = attrs.field(factory=set)
    _warned_supervised: set[str] = attrs.field(factory=set)

    def cycle(self, client: Client, *, now: float | None = None) -> ReapReport:
        """Run one cycle against Redis; return what it did.

        Raises:
            redis.RedisError, RedisClusterException: Redis failed; nothing was
                signalled for entries not read.
        """
        now = time.time() if now is None else now
        report = ReapReport()
        try:
            entries = read_entries(client, self.keys)
        except redis.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            self._drop_mistyped_keys(client)
            entries = read_entries(client, self.keys)
        report.malformed = entries.malformed
        for task_id, problem in entries.malformed.items():
            logger.warning("removing malformed forkpool entry %s: %s", task_id, problem)
        doomed = list(entries.malformed)
        for task_id, (entry, lease) in entries.valid.items():
            if self._judge(entry, lease, now, report):
                doomed.append(task_id)
        delete_entries(client, self.keys, doomed)
        report.removed = doomed
        self._warned_expired &= entries.valid.keys()
        self._warned_supervised &= entries.valid.keys()
        report.stale_hosts = self._forget_departed_hosts(client, now)
        self.cycles += 1
        return report

    def _drop_mistyped_keys(self, client: Client) -> None:
        """Delete this host's keys that hold the wrong Redis type (nothing can be read)."""
        for key, expected in ((self.keys.meta, "hash"), (self.keys.active, "zset")):
            actual = _text(cast("bytes", client.type(key)))
            if actual not in (expected, "none"):
                logger.warning("removing %s: it is a %s, not a %s", key, actual, expected)
                client.delete(key)

    def _judge(self, entry: TaskEntry, lease: float, now: float, report: ReapReport) -> bool:
        """Act on one entry; True if it should be deleted."""
        if entry.executor_id == self.owner_id:
            return False
        expired = lease < now
        if not same_context(entry, self.facts):
            # Another boot, or another container on this kernel: never signal.
            return expired
        if parent_alive(entry):
            if expired and entry.task_id not in self._warned_expired:
                self._warned_expired.add(entry.task_id)
                logger.warning(
                    "lease of forkpool task %s (pid %d, %s) expired, but its parent %d "
                    "is alive; leaving it to its owner",
                    entry.task_id,
                    entry.pid,
                    entry.name,
                    entry.parent_pid,
                    extra=_log_extra(entry),
                )
            return False
        supervisor = supervisor_of(entry, self.facts)
        if supervisor is not None:
            if entry.task_id not in self._warned_supervised:
                self._warned_supervised.add(entry.task_id)
                logger.warning(
                    "entry of forkpool task %s (pid %d, %s) names parent %d, which is gone, "
                    "but the kernel says process %d still supervises the child; leaving it",
                    entry.task_id,
                    entry.pid,
                    entry.name,
                    entry.parent_pid,
                    supervisor,
                    extra=_log_extra(entry),
                )
            return False
        child_found, handles = task_processes(entry, self.facts)
        if handles:
            self.stopper.stop(handles)
            logger.warning(
                "stopping orphaned forkpool task %s (%s): its parent %d is gone; "
                "%d process(es) signalled",
                entry.task_id,
                entry.name,
                entry.parent_pid,
                len(handles),
                extra=_log_extra(entry),
            )
        if child_found:
            report.stopped.append(entry)
        report.orphans_stopped += len(handles) - int(child_found)
        return True

    def _forget_departed_hosts(self, client: Client, now: float) -> list[str]:
        # Each host's score is when its own announced lease lapses. Costs one
        # command while every other host is alive, however many there are.
        hosts = cast("list[bytes]", client.zrangebyscore(self.keys.hosts, "-inf", f"({now}"))
        departed = [_text(host) for host in hosts if _text(host) != self.keys.host]
        if departed:
            # Each departed host's keys share a slot; different hosts' need not, so
            # no transaction (a cluster pipeline sends each command to its node).
            pipe = client.pipeline(transaction=False)
            for host in departed:
                gone = self.keys.for_host(host)
                pipe.delete(gone.active, gone.meta)
                pipe.zrem(self.keys.hosts, host)
            pipe.execute()
            logger.info("forgot departed forkpool hosts: %s", ", ".join(departed))
        return departed


def kill_all(
    redis: Client | str,
    *,
    host: str | None = None,
    key_prefix: str = "forkpool",
) -> int:
    """Stop every tracked child of this host and remove their entries.

    Each child (and each process of its group that carries the task's marker) is
    verified on the local kernel, then sent SIGKILL. The futures of the owning
    executors fail with :class:`ChildDiedError` saying who stopped them.

    Args:
        redis: A ``redis.Redis`` or ``RedisCluster`` client, or a Redis URL (any
            the executor takes: ``redis+cluster://``, ``redis+sentinel://`` too).
        host: The host whose children to stop; defaults as the executor decides
            (``FORKPOOL_HOST``, else the host name). Only children on *this*
            machine can be stopped.
        key_prefix: The executors' ``key_prefix``.

    Returns:
        How many tracked children were stopped.
    """
    client = client_from_url(redis) if isinstance(redis, str) else redis
    try:
        keys = Keys(key_prefix, default_host() if host is None else host)
        return stop_tracked_children(client, keys, f"forkpool.kill_all() in process {os.getpid()}")
    finally:
        if isinstance(redis, str):
            client.close()


def stop_tracked_children(client: Client, keys: Keys, stopped_by: str) -> int:
    """``kill_all`` for one host's keys; ``stopped_by`` is the word left for the owners."""
    facts = LocalFacts.current()
    entries = read_entries(client, keys)
    stopped = 0
    for entry, _lease in entries.valid.values():
        if not same_context(entry, facts):
            continue
        # Before the signal: the owner settles the future as soon as it sees the death.
        marked = parent_alive(entry) and _kill_marks.leave(entry.task_id, stopped_by)
        child_found, handles = task_processes(entry, facts)
        if marked and not child_found:
            _kill_marks.withdraw(entry.task_id)
        Stopper(grace=0).stop(handles, signal.SIGKILL)
        stopped += int(child_found)
    delete_entries(client, keys, [*entries.valid, *entries.malformed])
    return stopped
