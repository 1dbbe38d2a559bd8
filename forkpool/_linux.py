"""Thin access to Linux facilities: prctl and /proc.

Everything that needs ctypes is resolved here, at import, in the parent: looking up
a C symbol takes locks inside the dynamic loader, which must not happen for the
first time in a freshly forked child.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from pathlib import Path
from typing import Final

PR_SET_PDEATHSIG: Final = 1
PR_SET_NAME: Final = 15
COMM_MAX: Final = 15  # TASK_COMM_LEN - 1

HAS_PIDFD: Final = sys.platform == "linux" and hasattr(os, "pidfd_open")


def _load_prctl() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # A private function object (indexing does not cache one on the library)
        # without argtypes: converting arguments through ctypes types touches dozens
        # of objects, and in a fresh child each touched page is a copy-on-write fault.
        # Callers pass small ints and ctypes buffers, which need no conversion.
        prctl = libc["prctl"]
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    return prctl


_prctl = _load_prctl()


def set_parent_death_signal(signum: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``signum`` when the thread that forked us exits."""
    if _prctl is None:
        return False
    return bool(_prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0)


def name_buffer(name: str) -> ctypes.Array[ctypes.c_char]:
    """Prepare a kernel-visible name for :func:`set_name` (built before forking)."""
    return ctypes.create_string_buffer(name.encode("ascii", "replace")[:COMM_MAX])


def set_name(name: ctypes.Array[ctypes.c_char]) -> None:
    """Set this thread's kernel-visible name (``/proc/self/comm``), as prctl does."""
    if _prctl is not None and _prctl(PR_SET_NAME, name, 0, 0, 0) == 0:
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_bytes(name.value)
