"""``os.fork()`` without Python's "this process is multi-threaded" warning.

Forking from forkpool's own thread, with the precautions of ``_fork``, is the point
of forkpool, so the DeprecationWarning that Python 3.12+ emits for every fork in a
multi-threaded process is silenced for forkpool's fork calls, and for nothing else.
Some facts about that warning, each of which shaped this module:

* It is checked against the warnings filters like any warning. 3.12-3.14 discard it
  when a filter makes it an error; 3.15 raises it, in the parent, *after* the
  child exists.
* The filters consulted are ``warnings.filters`` or, in context-aware mode (3.14+,
  ``-X context_aware_warnings``), the calling thread's own list. An "ignore" filter
  put at the front of that list just before the fork silences the warning.
* ``warnings.catch_warnings()`` in another thread (libraries use it; pytest wraps
  every test in it) replaces ``warnings.filters`` with a copy as it enters and puts
  the old list back as it leaves. Between our insert and the fork's check, that can
  leave a list without our filter in place.
* From 3.14, one recursive lock guards every such swap, every filter change, and the
  warning's own check and display (``warnings._lock``). Held across
  insert-fork-remove, no other thread can swap the list in between; the fork's own
  check takes it again in this thread. The child inherits it held by its only
  thread and lets it go before the task runs. It is taken before logging's locks:
  a thread showing a warning holds it while it logs (``logging.captureWarnings``),
  and forkpool's waits for logging's locks are bounded, while this wait cannot be.
* 3.12 and 3.13 have no such lock. The window there is a few bytecodes and the
  at-fork hooks, and a lost race can only show the warning: CPython discards it as
  an error.
* Should 3.15+ raise it all the same (a filter added to the front by an at-fork
  hook, say), the child exists and runs its task: its pid is read from the kernel's
  list of this thread's children (``/proc/thread-self/children``), and it is
  supervised like any other.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from forkpool import _procfs

if TYPE_CHECKING:
    from collections.abc import Callable, Container

# Attributed to this module: it matches the warning of our own fork call only.
_FILTER: Final = (
    "ignore",
    re.compile(r"This process \(pid=\d+\) is multi-threaded, use of fork\(\)", re.IGNORECASE),
    DeprecationWarning,
    re.compile(re.escape(__name__) + r"\Z"),
    0,
)

# Only 3.12+ warns about forking a multi-threaded process.
_WARNS: Final = sys.version_info >= (3, 12)
# 3.14+: the warnings module's own lock and the calling thread's filter list.
_acquire_lock: Final[Callable[[], None] | None] = getattr(warnings, "_acquire_lock", None)
_release_lock: Final[Callable[[], None] | None] = getattr(warnings, "_release_lock", None)
_current_filters: Final[Callable[[], list[Any]] | None] = getattr(warnings, "_get_filters", None)

_THREAD_CHILDREN: Final = Path("/proc/thread-self/children")


def hold_filters() -> bool:
    """Keep other threads from changing or swapping the warnings filters (3.14+).

    Returns:
        Whether the lock was taken; pass it to :func:`release_filters`.
    """
    if _acquire_lock is None or not _WARNS:
        return False
    _acquire_lock()
    return True


def release_filters(held: bool) -> None:
    """Undo :func:`hold_filters`; in a child too, which inherited the lock held."""
    if held and _release_lock is not None:
        try:
            _release_lock()
        except RuntimeError:
            pass  # a Python that re-initializes the lock in a child: already free


def fork(siblings: Container[int]) -> int:
    """``os.fork()``, its warning silenced; with :func:`hold_filters` held where it exists.

    ``siblings``: the pids of the children this thread already supervises, to tell
    the new child from them if its pid must be recovered.

    Raises:
        OSError: fork() failed.
        RuntimeError: The interpreter refused to fork (it is exiting).
    """
    if not _WARNS:
        return os.fork()
    filters = _current_filters() if _current_filters is not None else warnings.filters
    filters = cast("list[Any]", filters)
    filters[:0] = (_FILTER,)  # at the front: the first filter that matches decides
    pid = -1
    try:
        pid = os.fork()
    except DeprecationWarning:
        pid = _new_child(siblings)  # raised in the parent (3.15+): the child exists
    finally:
        if pid != 0:  # the parent, whether the fork worked or not; a child keeps its copy
            try:
                filters.remove(_FILTER)
            except ValueError:
                pass  # the list was replaced meanwhile (3.12/3.13): ours is not in use
    return pid


def _new_child(siblings: Container[int]) -> int:
    """The pid of the child just forked by this thread, found through the kernel."""
    try:
        listed = [int(pid) for pid in _THREAD_CHILDREN.read_text().split()]
    except OSError:
        listed = []
    candidates = [pid for pid in listed if pid not in siblings]
    if not candidates:
        msg = (
            "fork() raised its multi-threaded DeprecationWarning after creating a child "
            "whose pid cannot be found (no /proc/thread-self/children)"
        )
        raise RuntimeError(msg)
    # Something else this thread started (a hook's subprocess) may be listed too:
    # the child just forked is the youngest.
    return max(candidates, key=lambda pid: _procfs.start_ticks(pid) or -1)
