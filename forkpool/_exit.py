"""Interpreter exit: every executor's work is finished first, as in concurrent.futures.

CPython's executors finish their running and queued tasks when the interpreter
exits, even after ``shutdown(wait=False)`` or once the executor is gone
(gh-83386), and refuse new work from then on. They do it from a hook that
``threading`` runs before any ``atexit`` handler, whenever that handler was
registered; so do we, through the same hook.

Each executor's runtime is registered here from its creation until it is shut
down and idle. This is module state because interpreter exit is: one exit, one
list of what it must wait for.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import Protocol


class ExitParticipant(Protocol):
    """What the exit hook needs of an executor's runtime."""

    def close_for_exit(self, *, interrupted: bool) -> None:
        """Refuse new work from now on; stop the children if Ctrl-C ended the program."""

    def interrupt(self) -> None:
        """Stop the children (Ctrl-C)."""

    def wait_for_exit(self) -> None:
        """Wait until the work has finished and the children are reaped."""


# Reentrant: a collected executor's finalizer calls forget(), and garbage collection
# can run inside register() or forget() in the same thread.
_lock = threading.RLock()
_registered: set[ExitParticipant] = set()


def _after_fork_in_child() -> None:
    """A fresh lock and list in every child: another thread may have held the lock at fork.

    A task that makes its own executor registers it here; with the lock inherited
    held (a parent thread was creating or shutting down an executor at that
    instant), it would wait forever. The parent's executors are not the child's to
    wait for at exit.
    """
    global _lock, _registered  # noqa: PLW0603 - the point: this process's own
    _lock = threading.RLock()
    _registered = set()


os.register_at_fork(after_in_child=_after_fork_in_child)


def register(participant: ExitParticipant) -> None:
    """Have interpreter exit wait for ``participant``'s work."""
    with _lock:
        _registered.add(participant)


def forget(participant: ExitParticipant) -> None:
    """``participant`` is shut down and idle: exit need not wait for it."""
    with _lock:
        _registered.discard(participant)


def _finish_everything() -> None:
    with _lock:
        participants = list(_registered)
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    interrupted = isinstance(last, KeyboardInterrupt)
    # Every executor refuses new work before any is waited for: a task's callback
    # must not submit to an executor that was already waited for.
    for participant in participants:
        participant.close_for_exit(interrupted=interrupted)
    try:
        for participant in participants:
            participant.wait_for_exit()
    except KeyboardInterrupt:
        # Ctrl-C during the wait: no child has a reason to run on.
        for participant in participants:
            participant.interrupt()
        for participant in participants:
            participant.wait_for_exit()
        raise


def _install() -> None:
    # threading's own pre-atexit hook, the one concurrent.futures uses; not public,
    # hence the fallback to plain atexit (which runs later, in registration order).
    register_early = getattr(threading, "_register_atexit", None)
    if register_early is None:
        atexit.register(_finish_everything)
        return
    # Imported during interpreter shutdown (RuntimeError): nothing is left to wait for.
    with contextlib.suppress(RuntimeError):
        register_early(_finish_everything)


_install()
