"""Celery: a worker pool that runs every task in a fresh fork, and a task base for any pool.

The pool, for workers whose every task should give its memory back::

    app.conf.worker_pool = "forkpool.celery:ForkPool"
    # or: CELERY_CUSTOM_WORKER_POOL=forkpool.celery:ForkPool celery -A proj worker -P custom

The task base, for one heavy task under any pool (prefork, threads, solo)::

    @app.task(base=forkpool.celery.ForkedTask, soft_time_limit=50, time_limit=60)
    def build_report(account_id): ...

How the pool maps Celery's semantics:

- accepted: the task's child is forked; Celery is told its pid.
- hard time limit: the child's process group is stopped (SIGTERM, SIGKILL after
  the kill grace); the task fails with ``TimeLimitExceeded``.
- soft time limit: the child gets SIGUSR1 and ``SoftTimeLimitExceeded`` is raised in
  the task, as under prefork.
- ``revoke(terminate=True, signal=...)``: that signal goes to the task's child; if
  the child dies of it, the task is revoked (``Terminated``).
- a child that crashes, or is killed by anyone else: ``WorkerLostError``.
- warm shutdown: running tasks finish; those not yet forked stay unacknowledged,
  and the broker redelivers them.
- cold shutdown: every child is stopped as at a hard time limit.
- results and failures are stored by the child, as under prefork.

The children are tracked in Redis under the worker's node name, and the reaper runs
from worker start; at shutdown the pool calls ``kill_all`` for that node name, so
nothing a task started outlives its worker. Settings: see ``_settings``.

Needs the ``celery`` extra: ``pip install 'forkpool[celery]'``.
"""

from forkpool.celery._pool import ForkPool
from forkpool.celery._task import ForkedTask

__all__ = ["ForkPool", "ForkedTask"]
