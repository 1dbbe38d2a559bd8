"""ForkedTask: a task base whose body runs in a fresh fork, under any Celery pool.

For users who keep prefork (or threads, or solo) and have a few heavy tasks: the
task's memory, and anything it leaves in global state, goes with its fork, and the
pool process stays as it was.

Time limits are the task's own (``time_limit``/``soft_time_limit``, or the
message's): the hard one is a forkpool timeout (``TimeLimitExceeded``), the soft
one a SIGUSR1 to the fork, where ``SoftTimeLimitExceeded`` is raised in the body.
So threads and solo pools, which enforce no time limit, get both. Under prefork
the pool's own limits run too. Its soft limit, raised in the pool process while it
waits, is passed on to the body rather than abandoning it. Its hard limit kills the
pool process, which would orphan whatever the body started (the fork itself dies
with its parent, but not its own children), so forkpool's hard limit falls due a
little earlier, stops the body's whole process group, and the pool process lives.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Final

import attrs
import cloudpickle
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

from forkpool import _linux
from forkpool._errors import ChildDiedError, TaskTimeoutError
from forkpool._executor import ForkPerTaskExecutor
from forkpool._options import options
from forkpool.celery import _in_child, _locks, _mold, _settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from celery import Celery

    from forkpool._future import ForkFuture

    _AnyTask = Task[..., Any]
else:
    _AnyTask = Task  # subscripting Task at run time needs Celery 5.5

# How often the wait looks at the clock for the soft limit.
_WAIT_SLICE: Final = 0.1
# How much earlier than a pool's own hard limit forkpool's falls due (at most a
# quarter of the limit): the pool starts its clock a little before the fork.
_AHEAD_OF_POOL: Final = 0.25
# The pool bounds how many tasks run at once; forkpool must never queue one more.
_SLOTS: Final = 1024

# Per app, per process (a prefork child makes its own): a mold belongs to one process.
_executors: weakref.WeakKeyDictionary[Celery, dict[int, _Executor]] = weakref.WeakKeyDictionary()
FORK_FROM_SETTING: Final = "forkpool_forked_task_fork_from"
_executors_lock = threading.Lock()
os.register_at_fork(after_in_child=lambda: globals().update(_executors_lock=threading.Lock()))


class ForkedTask(_AnyTask):
    """Runs the task's body in a fresh fork: ``@app.task(base=ForkedTask)``.

    Called directly (``build_report(42)``, not through a worker or ``apply``), and
    inside a :class:`~forkpool.celery.ForkPool` child, which is already a fresh
    fork, the body runs in place.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body in a fork, with the task's time limits; return what it returned."""
        body = super().__call__
        if _in_child.in_task_child or self.request.called_directly:
            return body(*args, **kwargs)
        hard, soft = _time_limits(self)
        node_name = self.request.hostname
        executor = _executor(self.app, node_name)
        run: Callable[[], Any]
        if executor.in_mold:
            # Only the task's name and request travel: the mold has the app.
            run = functools.partial(
                _in_child.run_forked_task, node_name, self.name, _request(self), args, kwargs
            )
        else:
            run = functools.partial(_in_child.run, node_name, body, *args, **kwargs)
        if hard is not None:
            run = options(timeout=hard - min(_AHEAD_OF_POOL, hard / 4))(run)
        future = executor.submit(run)
        _wait(future, soft)
        try:
            return future.result()
        except TaskTimeoutError as exc:
            raise TimeLimitExceeded(hard) from exc
        except ChildDiedError as exc:
            msg = f"Worker exited prematurely: {exc}"
            raise WorkerLostError(msg) from exc


def _wait(future: ForkFuture[Any], soft: float | None) -> None:
    """Wait for the fork, sending it the soft limit once (ours or the pool's)."""
    soft_at = None if soft is None else time.monotonic() + soft
    sent = False
    while not future.done():
        try:
            future._wait(_WAIT_SLICE, stop_on_error=False)  # noqa: SLF001 - see below
            if not sent and soft_at is not None and time.monotonic() >= soft_at:
                sent = future.send_signal(_in_child.SOFT_TIME_LIMIT_SIGNAL) or sent
        except SoftTimeLimitExceeded:
            # Prefork's soft limit, raised here: the body is the one to hear it.
            if not sent:
                sent = future.send_signal(_in_child.SOFT_TIME_LIMIT_SIGNAL)
        except BaseException:
            # Anything else (the pool's hard limit, a revoke) abandons the task.
            future.cancel()
            raise


def _time_limits(task: _AnyTask) -> tuple[float | None, float | None]:
    """(hard, soft) in seconds: the message's, else the task's, else the app's."""
    hard, soft = task.request.timelimit or (None, None)
    conf = task.app.conf
    return (
        hard or task.time_limit or conf.task_time_limit,
        soft or task.soft_time_limit or conf.task_soft_time_limit,
    )


@attrs.frozen
class _Executor:
    """This process's executor for an app's ForkedTasks, and where it forks from."""

    executor: ForkPerTaskExecutor
    in_mold: bool

    def submit(self, fn: Callable[[], Any]) -> ForkFuture[Any]:
        return self.executor.submit(fn)


def _executor(app: Celery, node_name: str | None) -> _Executor:
    """The app's executor for ForkedTasks in this process, made on first use."""
    pid = os.getpid()
    with _executors_lock:
        made = _executors.setdefault(app, {})
        executor = made.get(pid)
        if executor is None:
            kwargs = _settings.executor_kwargs(app, node_name=node_name)
            mold = _mold.make(app, node_name) if _forks_from_mold(app) else None
            try:
                executor = made[pid] = _Executor(
                    ForkPerTaskExecutor(
                        max_workers=_SLOTS,
                        parent_pre_fork=None if mold else _locks.find_before_fork,
                        child_post_fork=functools.partial(_in_child.enter_hook, node_name),
                        mold=mold,
                        **kwargs,
                    ),
                    in_mold=mold is not None,
                )
            except (TypeError, ValueError) as exc:
                if mold is not None:
                    mold.close()
                raise _settings.explain(exc) from exc
    return executor


def _forks_from_mold(app: Celery) -> bool:
    """``forkpool_forked_task_fork_from``: "auto" (a mold if this process has threads)."""
    choice = app.conf.get(FORK_FROM_SETTING) or "auto"
    if choice not in {"auto", "mold", "worker"}:
        msg = (
            f"Celery setting {FORK_FROM_SETTING} must be 'auto', 'mold' or 'worker', got {choice!r}"
        )
        raise ValueError(msg)
    if choice == "auto":
        # The threads pool (or an application's threads): a fork would copy their locks.
        return _linux.thread_count() > 1
    return bool(choice == "mold")


def _request(task: _AnyTask) -> dict[str, Any]:
    """The task's request as its body would see it, for a mold's child to push.

    What does not pickle (rare: objects a custom request class added) is left out.
    """
    request: dict[str, Any] = {}
    for name, value in vars(task.request).items():
        if name.startswith("_"):
            continue
        try:
            cloudpickle.dumps(value)
        except Exception:  # noqa: BLE001, S112 - left out, as the docstring says
            continue
        request[name] = value
    return request
