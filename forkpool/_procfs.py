"""What the local kernel says about a process, read from /proc.

The reaper trusts nothing it reads from Redis: before it signals anything it
compares the entry with these facts (pid, start time, boot, uid, pid namespace and
the marker the child set on itself).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Final

import attrs

from forkpool._linux import COMM_MAX

# What a forkpool child calls itself (``/proc/<pid>/comm``), and the environment
# variable it sets so that programs it execs carry the marker too.
COMM_PREFIX: Final = "fp-"
TASK_ID_ENV: Final = "FORKPOOL_TASK_ID"
# What a mold calls itself: the reaper's sign that a task's parent is one.
MOLD_COMM: Final = "fp-mold"


def comm_marker(task_id: str) -> str:
    """The kernel-visible name of the child that runs ``task_id``."""
    return (COMM_PREFIX + task_id)[:COMM_MAX]


@attrs.frozen
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` that identify a process."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    start_ticks: int


def read_stat(pid: int) -> ProcStat | None:
    """Read ``/proc/<pid>/stat``; None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # comm may itself contain spaces and parentheses: split at the last ')'.
    head, _, tail = raw.rpartition(b")")
    fields = tail.split()
    try:
        return ProcStat(
            pid=pid,
            comm=head.partition(b"(")[2].decode(errors="replace"),
            state=fields[0].decode(),
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            start_ticks=int(fields[19]),
        )
    except (IndexError, ValueError):
        return None


_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(pid: int) -> int | None:
    """The process's resident set now (``/proc/<pid>/statm``); None if it is gone.

    Read with bare descriptors: the supervisor reads it once per task.
    """
    try:
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, 128)
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = raw.split()
    return int(fields[1]) * _PAGE_SIZE if len(fields) > 1 else None


def peak_resident_bytes(pid: int) -> int | None:
    """The process's peak resident set so far (``VmHWM``); None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_bytes()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(b"VmHWM:"):
            return int(line.split()[1]) * 1024
    return None  # a zombie: no memory left to count


def shared_resident_bytes(pid: int) -> int | None:
    """Resident pages the process shares with another (``smaps_rollup``); None if unreadable."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_bytes()
    except OSError:
        return None
    shared = [
        int(line.split()[1]) * 1024
        for line in rollup.splitlines()
        if line.startswith((b"Shared_Clean:", b"Shared_Dirty:"))
    ]
    return sum(shared) if shared else None


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    stat = read_stat(pid)
    return None if stat is None else stat.start_ticks


def boot_id() -> str:
    """This boot's random id; empty where the kernel does not provide one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_namespace(pid: int | str = "self") -> str | None:
    """The pid namespace of a process, as ``pid:[inode]``; None if unreadable."""
    try:
        return str(Path(f"/proc/{pid}/ns/pid").readlink())
    except OSError:
        return None


def owner_uid(pid: int) -> int | None:
    """The uid that owns the process, or None if it is gone."""
    try:
        return Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return None


def carries_task_marker(pid: int, stat: ProcStat, task_id: str) -> bool:
    """The process named itself after the task, or has the task's id in its environment."""
    if stat.comm == comm_marker(task_id):
        return True
    needle = f"{TASK_ID_ENV}={task_id}".encode()
    with contextlib.suppress(OSError):
        return needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return False


def holds_pidfd_of(holder: int, pid: int) -> bool | None:
    """``holder`` has a pidfd open for ``pid``; None if its descriptors cannot be read.

    A pidfd's ``/proc/<holder>/fdinfo/<fd>`` names the process it refers to
    (``Pid:``); a forkpool supervisor keeps one for each child until it reaps it.
    """
    try:
        fds = list(Path(f"/proc/{holder}/fd").iterdir())
    except OSError:
        return None
    for fd in fds:
        try:
            if str(fd.readlink()) != "anon_inode:[pidfd]":
                continue
            info = Path(f"/proc/{holder}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue  # closed meanwhile
        match = _PIDFD_TARGET.search(info)
        if match is not None and int(match[1]) == pid:
            return True
    return False


_PIDFD_TARGET: Final = re.compile(r"^Pid:\s*(-?\d+)$", re.MULTILINE)


@attrs.frozen
class LocalFacts:
    """Who this process is, as the kernel sees it: what an entry must match."""

    boot_id: str
    pidns: str
    uid: int

    @classmethod
    def current(cls) -> LocalFacts:
        """The facts of this process."""
        return cls(boot_id=boot_id(), pidns=pid_namespace() or "", uid=os.getuid())


def all_pids() -> list[int]:
    """Every pid visible in this pid namespace."""
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
