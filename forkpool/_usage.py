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
        max_rss_bytes: Peak resident set size, in bytes.
        user_time: CPU seconds spent in user mode.
        system_time: CPU seconds spent in the kernel.
        wall_time: Seconds from fork to reaping.
    """

    max_rss_bytes: int
    user_time: float
    system_time: float
    wall_time: float

    @classmethod
    def from_rusage(cls, usage: resource.struct_rusage | None, wall_time: float) -> ResourceUsage:
        """Convert ``wait4``'s rusage (Linux reports ru_maxrss in KiB); None gives zeros."""
        if usage is None:
            return cls(max_rss_bytes=0, user_time=0.0, system_time=0.0, wall_time=wall_time)
        return cls(
            max_rss_bytes=usage.ru_maxrss * _KIB,
            user_time=usage.ru_utime,
            system_time=usage.ru_stime,
            wall_time=wall_time,
        )

    def __str__(self) -> str:
        return (
            f"{format_bytes(self.max_rss_bytes)} peak RSS, {self.user_time:.2f}s user, "
            f"{self.system_time:.2f}s system, {self.wall_time:.2f}s wall"
        )


def format_bytes(count: float) -> str:
    """``4187593113`` -> ``"3.9 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < _KIB or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= _KIB
    return f"{count:.1f} TiB"  # pragma: no cover - the loop always returns
