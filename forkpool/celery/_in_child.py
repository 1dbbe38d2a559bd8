"""What a task's child does before its task, so that Celery code runs there as in prefork.

A prefork child is set up once (``celery.concurrency.prefork.process_initializer``)
and then runs many tasks. Each of ours is a fork of a process that is already set
up -- the worker's main process, or a pool process for :class:`ForkedTask` -- so
it needs only what a fork breaks, and what users hook into:

- kombu's ``cached_property`` locks made new, for a child of a threaded process
  (see ``_locks``);
- the worker's app made current and the process's default, as prefork's
  initializer does: Celery's tracer looks the task up in ``current_app``, and the
  worker's app need not be the default of the process that forks (an embedded
  worker, the pytest plugin's, any process with a second app);
- the soft time limit's handler: SIGUSR1 raises ``SoftTimeLimitExceeded`` in the
  task, as billiard's children do (so ``revoke(terminate=True, signal="SIGUSR1")``
  means what it means under prefork);
- the after-fork hooks of ``multiprocessing.util.register_after_fork``, where
  Celery and kombu drop their connection pools (a fork must never share the
  parent's broker connection);
- ``worker_process_init`` before the task and ``worker_process_shutdown`` after it,
  the signals prefork sends as each child starts and ends: where users reconnect
  their databases (Celery's Django fixup closes the inherited connections there).
"""

from __future__ import annotations

import functools
import multiprocessing.util
import os
import signal
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from celery import signals
from celery._state import _set_task_join_will_block  # type: ignore[attr-defined]
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker import state as worker_state

from forkpool.celery import _locks

if TYPE_CHECKING:
    import types
    from collections.abc import Callable

    from celery import Celery

T = TypeVar("T")

SOFT_TIME_LIMIT_SIGNAL = signal.SIGUSR1

# Set in a task's child: a ForkedTask there runs its body in place, not in a
# fork of the fork.
in_task_child = False


def _raise_soft_time_limit(signum: int, frame: types.FrameType | None) -> NoReturn:
    del signum, frame
    raise SoftTimeLimitExceeded


def enter(node_name: str | None, app: Celery | None = None) -> None:
    """In a fresh child, before its task: see the module docstring.

    ``app`` is the worker's, for a pool's child; a ``ForkedTask``'s child runs the
    task object it was given, which holds its app.
    """
    global in_task_child  # noqa: PLW0603 - a fact about this process
    # Before anything touches kombu's cached properties (see _locks).
    _locks.renew()
    # From here on the parent may send the soft limit.
    signal.signal(SOFT_TIME_LIMIT_SIGNAL, _raise_soft_time_limit)
    in_task_child = True
    if app is not None:
        app.set_current()
        app.set_default()
    # What Celery and kombu registered to run in a fork (they rely on
    # multiprocessing's children running it; os.fork() does not).
    multiprocessing.util._run_after_forkers()  # type: ignore[attr-defined]  # noqa: SLF001
    _set_task_join_will_block(True)
    worker_state.reset_state()
    signals.worker_process_init.send(sender=node_name)


def enter_hook(node_name: str | None, fn: object, args: object, kwargs: object) -> None:
    """``child_post_fork`` for a mold's children: the mold made the app current."""
    del fn, args, kwargs
    enter(node_name)


def job(
    node_name: str | None, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[], T]:
    """A pool's task as it is rebuilt in a mold's child (see ``_Job.__reduce__``)."""
    return functools.partial(run, node_name, fn, *args, **kwargs)


def run_forked_task(
    node_name: str | None,
    name: str,
    request: dict[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """In a mold's child: a ForkedTask's body, under the request it was called with."""
    from celery import current_app  # noqa: PLC0415 - the mold made the app current

    task = current_app.tasks[name]
    task.push_request(**request)
    try:
        return run(node_name, task, *args, **kwargs)  # in a task's child: the body in place
    finally:
        task.pop_request()


def setup_logging(app: Celery, node_name: str | None) -> None:
    """Logging as a prefork child sets it up, from what the worker left in the environment."""
    logfile = os.environ.get("CELERY_LOG_FILE") or None
    app.log.setup(
        int(os.environ.get("CELERY_LOG_LEVEL") or 0),
        logfile,
        bool(os.environ.get("CELERY_LOG_REDIRECT")),
        str(os.environ.get("CELERY_LOG_REDIRECT_LEVEL")),
        hostname=node_name,
    )


def run(node_name: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """In the child, after :func:`enter`: the task, then prefork's end-of-process signal."""
    try:
        return fn(*args, **kwargs)
    finally:
        # A soft limit that falls due now must not land while the outcome is sent.
        signal.signal(SOFT_TIME_LIMIT_SIGNAL, signal.SIG_IGN)
        signals.worker_process_shutdown.send(sender=node_name, pid=os.getpid(), exitcode=0)
