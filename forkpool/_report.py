"""What the command line prints, and how it fails: shared by ``forkpool``'s commands and the demo.

The rows and table of tracked children (``forkpool ps``, and the demo's snapshot),
text from Redis made safe for a terminal, and the one error the command line
reports as a single line.
"""

from __future__ import annotations

import sys
import unicodedata
from typing import TYPE_CHECKING, Any, Final

import attrs

from forkpool import _procfs
from forkpool._entry import Keys
from forkpool._reaper import parent_alive, read_entries
from forkpool._tracking import default_host
from forkpool._usage import format_bytes

if TYPE_CHECKING:
    from forkpool._entry import TaskEntry
    from forkpool._redis import Client


class CliError(Exception):
    """An error to report as one line and a non-zero exit."""


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 task``, ``2 tasks``; ``plural_form`` where adding an s is wrong."""
    return f"{count} {singular if count == 1 else plural_form or singular + 's'}"


@attrs.frozen
class Row:
    """One tracked child as ``forkpool ps`` shows it."""

    entry: TaskEntry
    lease_expires: float
    parent_alive: bool | None
    # The task's own memory at its peak so far (see ResourceUsage.own_peak_bytes):
    # known for this host's children only.
    own_peak_bytes: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The entry's fields plus ``lease_expires``, ``parent_alive``, ``own_peak_bytes``."""
        return {
            **attrs.asdict(self.entry),
            "lease_expires": self.lease_expires,
            "parent_alive": self.parent_alive,
            "own_peak_bytes": self.own_peak_bytes,
        }


def collect_rows(client: Client, prefix: str, hosts: list[str]) -> list[Row]:
    """Read the tracked children of ``hosts``; malformed entries are reported, skipped."""
    local = default_host()
    facts = _procfs.LocalFacts.current()
    rows: list[Row] = []
    for host in hosts:
        entries = read_entries(client, Keys(prefix, host))
        for task_id, problem in sorted(entries.malformed.items()):
            print(
                f"forkpool: skipping malformed entry {shown(task_id)} on {shown(host)}: "
                f"{shown(problem)}",
                file=sys.stderr,
            )
        for entry, lease in entries.valid.values():
            here = host == local and entry.boot_id == facts.boot_id
            rows.append(
                Row(
                    entry,
                    lease,
                    parent_alive(entry) if here else None,
                    own_peak(entry) if here else None,
                )
            )
    rows.sort(key=lambda row: (row.entry.host, row.entry.started))
    return rows


def own_peak(entry: TaskEntry) -> int | None:
    """A local child's own memory at its peak so far; None if unknown or not that process.

    Its peak RSS less the pages it still shares (with its parent, mostly: what it
    inherited and has not written to, and code): no baseline is needed, so the
    figure is the kernel's alone.
    """
    if _procfs.start_ticks(entry.pid) != entry.pid_start:
        return None  # gone, or the pid is a stranger's now
    peak = _procfs.peak_resident_bytes(entry.pid)
    shared = _procfs.shared_resident_bytes(entry.pid)
    return None if peak is None or shared is None else max(0, peak - shared)


def shown(text: str) -> str:
    """``text`` safe for a terminal: control and format characters escaped, as repr does.

    Everything ``ps``, ``reap`` and ``kill-all`` print comes from Redis, which any
    host sharing it can write: a name must not move the cursor, recolour the
    screen, ring the bell or start a new line.
    """
    return "".join(
        repr(char)[1:-1] if unicodedata.category(char) in _UNSHOWN else char for char in text
    )


# Control, format (bidi overrides among them), line and paragraph separators.
_UNSHOWN: Final = frozenset({"Cc", "Cf", "Zl", "Zp"})


def render_table(rows: list[Row], now: float) -> str:
    """An aligned table of rows, for people."""
    header = (
        "HOST",
        "TASK",
        "PID",
        "NAME",
        "AGE",
        "DEADLINE IN",
        "LEASE LEFT",
        "OWN PEAK",
        "PARENT",
    )
    lines = [header]
    for row in rows:
        entry = row.entry
        lines.append(
            (
                shown(entry.host),
                shown(entry.task_id[:12]),
                str(entry.pid),
                shown(entry.name),
                _duration(now - entry.started),
                "-" if entry.deadline is None else _duration(entry.deadline - now),
                _duration(row.lease_expires - now),
                "?" if row.own_peak_bytes is None else format_bytes(row.own_peak_bytes),
                {True: "alive", False: "dead", None: "?"}[row.parent_alive],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _duration(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:  # noqa: PLR2004 - one minute
        return f"{sign}{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{sign}{hours}h{minutes:02d}m" if hours else f"{sign}{minutes}m{secs:02d}s"
