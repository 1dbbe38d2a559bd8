"""Every process a task started, whatever process group or session it moved to.

A task's child leads its own process group, and ``killpg`` reaches what stays in
it. A task can start processes elsewhere: its own ForkPerTaskExecutor puts each of
its children in a group of their own, and ``start_new_session=True`` makes a
session. When a task is stopped (timeout, cancel, terminate), those must go too.

They are found by following parent links in ``/proc`` down from the task's child,
while it is still alive: once a process exits, its children are re-parented and
the link is lost. So that a process forked mid-walk is not missed, each process
found is stopped (SIGSTOP) before the walk goes on: a stopped process cannot
fork, and walking again until a pass finds nothing new finds them all. Each is
held by a pidfd opened before its parent link is re-checked, so a pid recycled
mid-walk is never the one signalled.

A task that finishes normally is not walked: a process it moved to its own
session on purpose may outlive it.
"""

from __future__ import annotations

import signal
from typing import Final

import attrs

from forkpool import _linux, _procfs

# A walk that keeps finding new processes after this many passes is a fork bomb;
# what was found by then is stopped, and the next signal walks again.
_MAX_PASSES: Final = 8
_GONE: Final = ("Z", "X")


@attrs.define
class ProcessTree:
    """Handles to a process's descendants (pidfds, or pids without pidfd support)."""

    root: int
    # pid -> (handle, start time in clock ticks): a parent link counts only from a
    # process that still has the start time it had when it was found.
    held: dict[int, tuple[int, int]] = attrs.field(factory=dict)

    def freeze(self) -> None:
        """SIGSTOP every live descendant of the root (and of those already held).

        The caller stops the root itself first, and owns it: it is an unreaped
        child of this process, so its pid cannot be recycled.
        """
        for _ in range(_MAX_PASSES):
            table = _process_table()
            parents = {self.root} | {
                pid for pid, (_, start) in self.held.items() if table.get(pid, (0, -1))[1] == start
            }
            found = [
                (pid, start)
                for pid, (ppid, start) in table.items()
                if ppid in parents and pid not in self.held and pid != self.root
            ]
            if not found:
                return
            for pid, start in found:
                handle = _open_descendant(pid, start, parents)
                if handle is not None:
                    _linux.send_signal(handle, signal.SIGSTOP)
                    self.held[pid] = (handle, start)

    def send(self, signum: int) -> None:
        """Send ``signum`` to every descendant held."""
        for handle, _ in self.held.values():
            _linux.send_signal(handle, signum)

    def close(self) -> None:
        """Let go of every handle."""
        _linux.close_handles(handle for handle, _ in self.held.values())
        self.held.clear()


def _process_table() -> dict[int, tuple[int, int]]:
    """Pid -> (parent pid, start ticks) of every live process in this pid namespace."""
    table: dict[int, tuple[int, int]] = {}
    for pid in _procfs.all_pids():
        stat = _procfs.read_stat(pid)
        if stat is not None and stat.state not in _GONE:
            table[pid] = (stat.ppid, stat.start_ticks)
    return table


def _open_descendant(pid: int, start: int, parents: set[int]) -> int | None:
    """A handle to ``pid`` if, once held, it is the same process and a child of ``parents``."""
    handle = _linux.open_handle(pid)
    if handle is None:
        return None
    stat = _procfs.read_stat(pid)
    if stat is None or stat.start_ticks != start or stat.ppid not in parents or stat.state in _GONE:
        _linux.close_handles([handle])
        return None
    return handle
