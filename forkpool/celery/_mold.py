"""A mold holding the worker's app: where ForkPool and ForkedTask fork tasks from.

A Celery task arrives as a message and needs nothing of the worker process but the
loaded app: its configuration, its tasks, its result backend. So by default the
pool forks each task from a mold, a fresh interpreter that imported the app's
module and set the app up as a prefork child does, once. The worker's own threads
(its consumer, the pool's callback thread, the application's) are never copied into
a task, with whatever locks they hold: kombu's ``cached_property`` locks, taken on
every access of a result backend's client, once deadlocked a third of the tasks of
a worker whose application thread read ``app.backend.client``.

Setting ``forkpool_fork_from = "worker"`` forks from the worker process instead, as
before (then tasks inherit everything of it, unpicklable state included). An app
that cannot be imported by a fresh interpreter (made in ``__main__`` or inside a
function) is forked from the worker too, and the log says so.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Final

from forkpool._mold import Mold

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger("forkpool.celery")

SETTING: Final = "forkpool_fork_from"
CHOICES: Final = ("mold", "worker")


def fork_from(app: Celery) -> str:
    """The ``forkpool_fork_from`` setting: "mold" (the default) or "worker"."""
    choice = app.conf.get(SETTING) or "mold"
    if choice not in CHOICES:
        msg = f"Celery setting {SETTING} must be 'mold' or 'worker', got {choice!r}"
        raise ValueError(msg)
    return str(choice)


def make(app: Celery, node_name: str | None) -> Mold | None:
    """A mold holding ``app``, or None if it must be forked from the worker.

    Raises:
        forkpool.MoldError: The mold could not import the app (with the traceback).
    """
    if fork_from(app) == "worker":
        return None
    where = _location(app)
    if where is None:
        logger.info(
            "forkpool: %r cannot be imported by a fresh interpreter (it is made in "
            "__main__ or in a function); tasks are forked from the worker process",
            app,
        )
        return None
    module, name = where
    return Mold(preload=(), initializer=prepare, initargs=(module, name, node_name))


def _location(app: Celery) -> tuple[str, str] | None:
    """(module, attribute) where a fresh interpreter finds ``app``, if anywhere."""
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name in {"__main__", "__mp_main__"}:
            continue
        if module_name.startswith(("celery.", "kombu.", "forkpool.")):
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attribute, value in list(namespace.items()):
            if value is app:
                return module_name, attribute
    return None


def prepare(module_name: str, attribute: str, node_name: str | None) -> None:
    """In the mold, once: the app as a prefork child has it, minus the per-process parts.

    ``worker_process_init`` is not sent here: each task's child sends it, as each
    prefork child does, so that connections opened there are the child's own.
    """
    import importlib  # noqa: PLC0415 - in the mold only

    from celery.app import trace  # noqa: PLC0415
    from celery.worker import state as worker_state  # noqa: PLC0415

    from forkpool.celery import _in_child  # noqa: PLC0415

    app: Any = getattr(importlib.import_module(module_name), attribute)
    app.set_current()
    app.set_default()
    app.loader.init_worker()
    app.loader.init_worker_process()
    _in_child.setup_logging(app, node_name)
    trace.setup_worker_optimizations(app, node_name)
    for name, task in app.tasks.items():
        task.__trace__ = trace.build_tracer(name, task, app.loader, node_name, app=app)
    worker_state.reset_state()
    # Made here, once: each child then finds it made (its connections are the
    # child's own, opened after fork).
    _ = app.backend
    # A connection to a host by name encodes the name with the idna codec, imported
    # on first use: by each child, were it not imported here.
    "localhost".encode("idna")
