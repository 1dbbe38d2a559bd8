"""What a child used, as the kernel reported it when the child was reaped."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    import resource

_KIB = 1024


@attrs.frozen
class ResourceUsage:
    """A finished child's resource use (from ``wait4``).

    Attributes:
        max_rss_bytes: Peak resident set size, in bytes, as the kernel counts it:
            every page the child had mapped, those it inherited from its parent
            included. A task of a 2 GiB parent peaks at over 2 GiB however little
            it allocates.
        user_time: CPU seconds spent in user mode.
        system_time: CPU seconds spent in the kernel.
        wall_time: Seconds from fork to reaping.
        own_peak_bytes: The task's own memory at its peak: how far the child's
            resident set grew beyond what it held just before the task's callable
            ran (the child measures that itself; for a child that died before
            reporting, the supervisor's reading right after the fork stands in).
            What the task allocates is in it, freed before the end or not;
            inherited pages it only wrote to (copies on write) are not. None when
            unknown (the child was gone before it could be measured).
    """

    max_rss_bytes: int
    user_time: float
    system_time: float
    wall_time: float
    own_peak_bytes: int | None = None

    @classmethod
    def from_rusage(
        cls,
        usage: resource.struct_rusage | None,
        wall_time: float,
        resident_at_start: int | None = None,
    ) -> ResourceUsage:
        """Convert ``wait4``'s rusage (Linux reports ru_maxrss in KiB); None gives zeros.

        ``resident_at_start``: the child's resident set when its task began.
        """
        if usage is None:
            return cls(max_rss_bytes=0, user_time=0.0, system_time=0.0, wall_time=wall_time)
        max_rss = usage.ru_maxrss * _KIB
        return cls(
            max_rss_bytes=max_rss,
            user_time=usage.ru_utime,
            system_time=usage.ru_stime,
            wall_time=wall_time,
            own_peak_bytes=None
            if resident_at_start is None
            else max(0, max_rss - resident_at_start),
        )

    def describe_memory(self) -> str:
        """``"52.3 MiB own peak (1.1 GiB peak RSS)"``, or the peak RSS alone if that is all."""
        peak = f"{format_bytes(self.max_rss_bytes)} peak RSS"
        if self.own_peak_bytes is None:
            return peak
        return f"{format_bytes(self.own_peak_bytes)} own peak ({peak})"

    def __str__(self) -> str:
        return (
            f"{self.describe_memory()}, {self.user_time:.2f}s user, "
            f"{self.system_time:.2f}s system, {self.wall_time:.2f}s wall"
        )


def format_bytes(count: float) -> str:
    """``4187593113`` -> ``"3.9 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < _KIB or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= _KIB
    return f"{count:.1f} TiB"  # pragma: no cover - the loop always returns
