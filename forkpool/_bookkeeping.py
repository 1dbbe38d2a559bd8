"""The Redis thread: writes entries in batches, renews leases, runs the reaper.

The supervisor never waits on Redis. It hands this thread two kinds of event --
a child was forked, a child exited -- and goes on. The thread lets events gather
for a moment (``_LINGER``), coalesces them (a task that ended before its entry was
written needs no write at all), writes what is left in one transaction on this
host's keys (they share a hash slot, so a Redis Cluster takes it too), and every
``reap_interval`` rewrites the full entry of every running child (so a Redis that
restarted empty is repopulated without anyone noticing the restart), renews the
host's lease in the hosts index (a key of another slot, written on its own), and
runs a reaper cycle -- whether or not the writes went through.

The host's lease is announced, not assumed: its score in ``{prefix}:hosts`` is when
it lapses (now + this executor's ttl, or a running task's longer one), raised and
never lowered (``ZADD GT``), so executors with different ttls on one host never
shorten each other's lease, and another host judges this one departed only once
its own announced lease has passed.

While Redis is unreachable the events accumulate in memory bounded by the number
of children alive at once: registrations are kept per running child, and no
removal is kept at all. A failed write may or may not have landed, so instead the
first successful write afterwards reconciles: it rewrites every running child's
entry and deletes every other entry of this executor that Redis holds. One warning
is logged per outage.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Final

from forkpool import _observe, _procfs
from forkpool._entry import MalformedEntryError, TaskEntry
from forkpool._fork import block_signals_in_this_thread
from forkpool._reaper import Reaper, Stopper
from forkpool._redis import FAILURES, describe_failure, per_host_pipeline

if TYPE_CHECKING:
    from forkpool._redis import Client, RedisSource
    from forkpool._tracking import Forked, TrackingContext

logger = logging.getLogger("forkpool.redis")

# After a failed write, how long to wait before the next attempt (the client has
# already retried with its own backoff by then).
_RETRY_PAUSE: Final = 1.0
# How long events gather before a write. Tasks shorter than this cost Redis nothing.
_LINGER: Final = 0.05


class Bookkeeper:
    """One executor's Redis bookkeeping and reaper thread."""

    def __init__(
        self,
        source: RedisSource,
        context: TrackingContext,
        *,
        ttl: float,
        reap_interval: float,
        kill_grace: float,
        name: str = "default",
    ) -> None:
        # Its client is made in this thread, on first use (see _redis).
        self._name = name  # the executor's, for metrics
        self._source = source
        self._keys = context.keys
        self._ttl = ttl
        self._reap_interval = reap_interval
        self.reaper = Reaper(
            keys=context.keys,
            facts=context.facts,
            stopper=Stopper(kill_grace),
            owner_id=context.executor_id,
        )
        self._context = context
        self._linger = min(_LINGER, reap_interval / 4)
        # register() and remove() run on the supervisor's per-task path: they take
        # the lock itself (C) rather than the Condition (a Python-level wrapper).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._running: dict[str, Forked] = {}
        self._entries: dict[str, TaskEntry] = {}
        self._pending_since: float | None = None
        self._unwritten: set[str] = set()
        self._removals: set[str] = set()
        # A write failed: which entries of ours Redis holds is unknown until the
        # next successful write looks.
        self._reconcile = False
        self._closing = False
        self._outage_since: float | None = None
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="forkpool-redis", daemon=True)

    # --- called from other threads -----------------------------------------------------

    def start(self) -> None:
        """Start the thread; its first reaper cycle runs at once."""
        self._thread.start()

    def register(self, forked: Forked) -> None:
        """A child was forked: record it (written soon, in a batch)."""
        with self._lock:
            self._running[forked.task_id] = forked
            self._unwritten.add(forked.task_id)
            self._note_pending()

    def remove(self, task_id: str) -> None:
        """A child exited; call before reaping it, while its pid is still its own.

        Its entry is deleted soon, if it was ever written.
        """
        with self._lock:
            self._running.pop(task_id, None)
            self._entries.pop(task_id, None)
            if task_id in self._unwritten:
                self._unwritten.discard(task_id)
            else:
                self._removals.add(task_id)
                self._note_pending()

    def _note_pending(self) -> None:
        # Only the first event of a batch wakes the thread; it then lingers.
        if self._pending_since is None:
            self._pending_since = time.monotonic()
            self._cond.notify()

    def close(self, timeout: float | None = 0.0) -> bool:
        """Write the last removals and stop; wait up to ``timeout``. True if stopped."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.ident is None:
            return True
        if timeout is None or timeout > 0:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """The thread is running."""
        return self._thread.is_alive()

    @property
    def pending(self) -> tuple[int, int]:
        """(entries waiting to be written, removals waiting to be written)."""
        with self._cond:
            return len(self._unwritten), len(self._removals)

    # --- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        block_signals_in_this_thread()  # signals are for the main thread
        next_cycle = time.monotonic()
        try:
            while True:
                closing = self._wait_for_work(next_cycle)
                now = time.monotonic()
                self.reaper.stopper.escalate(now=now)
                if closing:
                    self._write(renew=False)
                    return
                if now >= next_cycle:
                    # The reaper runs on its schedule whether or not the renewal
                    # went through: orphans must not wait on a host's own trouble.
                    self._write(renew=True)
                    self._reap()
                    next_cycle = time.monotonic() + self._reap_interval
                elif now >= self._retry_at and self._pending_since is not None:
                    self._write(renew=False)
        except Exception:
            logger.exception("forkpool's Redis thread failed; bookkeeping stopped")
        finally:
            self.reaper.stopper.escalate(force=True)
            self._source.close()

    def _wait_for_work(self, next_cycle: float) -> bool:
        with self._cond:
            while not self._closing:
                now = time.monotonic()
                wake_at = next_cycle
                kill_due = self.reaper.stopper.next_deadline()
                if kill_due is not None:
                    wake_at = min(wake_at, kill_due)
                if self._pending_since is not None and (self._unwritten or self._removals):
                    wake_at = min(wake_at, max(self._retry_at, self._pending_since + self._linger))
                if now >= wake_at:
                    break
                self._cond.wait(wake_at - now)
            return self._closing

    def _write(self, *, renew: bool) -> bool:
        """Write pending registrations and removals (all running entries if ``renew``)."""
        with self._cond:
            self._pending_since = None
            ids = set(self._running) if renew else self._unwritten & self._running.keys()
            forked = [self._running[task_id] for task_id in ids]
            removals = set(self._removals)
            self._unwritten.clear()
        entries = self._complete(forked)
        if not entries and not removals and not renew and not self._reconcile:
            return True
        now = time.time()
        reconciled = 0
        try:
            client = self._source.client
            if entries or removals:
                pipe = per_host_pipeline(client)  # this host's keys share one slot
                if entries:
                    pipe.zadd(self._keys.active, {e.task_id: now + e.ttl for e in entries})
                    pipe.hset(self._keys.meta, mapping={e.task_id: e.to_json() for e in entries})
                if removals:
                    pipe.zrem(self._keys.active, *removals)
                    pipe.hdel(self._keys.meta, *removals)
                pipe.execute()
            if renew:
                # On its own: the hosts index lives in another slot than this host's keys.
                lease = max([self._ttl, *(e.ttl for e in entries)])
                client.zadd(self._keys.hosts, {self._keys.host: now + lease}, gt=True)
            with self._cond:
                self._removals -= removals
            if self._reconcile:
                reconciled = self._delete_stale_entries(client)
                self._reconcile = False
        except FAILURES as exc:
            with self._cond:
                # Everything running must be rewritten once Redis is back: a server
                # that restarted empty has lost even the entries written before.
                # Removals are dropped: the reconciliation finds what to delete.
                self._unwritten = set(self._running)
                self._removals.clear()
                self._reconcile = True
                self._pending_since = time.monotonic()
            self._failed(exc)
            return False
        self._recovered(len(entries), len(removals) + reconciled)
        return True

    def _delete_stale_entries(self, client: Client) -> int:
        """Delete this executor's entries of children no longer running; return how many."""
        stale: list[str] = []
        owner = self._context.executor_id
        for field, raw in client.hgetall(self._keys.meta).items():
            task_id = field.decode() if isinstance(field, bytes) else str(field)
            try:
                entry = TaskEntry.from_json(raw, task_id)
            except MalformedEntryError:
                continue  # the reaper removes malformed entries
            if entry.executor_id == owner:
                stale.append(task_id)
        with self._cond:
            stale = [task_id for task_id in stale if task_id not in self._running]
        if stale:
            pipe = per_host_pipeline(client)
            pipe.zrem(self._keys.active, *stale)
            pipe.hdel(self._keys.meta, *stale)
            pipe.execute()
        return len(stale)

    def _complete(self, forked: list[Forked]) -> list[TaskEntry]:
        """The full entries of these children, reading their start times once.

        A start time read here is only used if the child is still registered
        afterwards: the supervisor calls remove() before it reaps, so a child still
        registered after the read was unreaped during it, and its pid was its own.
        """
        with self._cond:
            known = {
                f.task_id: self._entries[f.task_id] for f in forked if f.task_id in self._entries
            }
        fresh = {
            f.task_id: (f, _procfs.start_ticks(f.pid)) for f in forked if f.task_id not in known
        }
        with self._cond:
            for task_id, (child, pid_start) in fresh.items():
                if task_id in self._running and pid_start is not None:
                    known[task_id] = self._entries[task_id] = self._context.entry_for(
                        child, pid_start
                    )
        return list(known.values())

    def _reap(self) -> None:
        try:
            report = self.reaper.cycle(self._source.client)
        except FAILURES as exc:
            self._failed(exc)
            return
        if report.stopped:
            _observe.orphans_reaped(self._name, len(report.stopped))

    def _failed(self, exc: Exception) -> None:
        _observe.redis_error(self._name)
        self._source.after_failure()
        self._retry_at = time.monotonic() + min(self._reap_interval, _RETRY_PAUSE)
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.warning(
                "%s; tasks keep running, but forkpool's bookkeeping is degraded until "
                "that is fixed",
                describe_failure(exc, self._source.description),
            )

    def _recovered(self, written: int, removed: int) -> None:
        if self._outage_since is None:
            return
        logger.warning(
            "Redis at %s works again after %.1fs; re-registered %d running "
            "task(s) and removed %d finished one(s)",
            self._source.description,
            time.monotonic() - self._outage_since,
            written,
            removed,
        )
        self._outage_since = None
