"""forkpool: a concurrent.futures executor that forks a fresh child per task."""

from forkpool._errors import (
    ChildDiedError,
    ForkPoolError,
    RemoteTaskError,
    ResultNotPicklableError,
    TaskTimeoutError,
)
from forkpool._executor import ForkPerTaskExecutor
from forkpool._future import ForkFuture
from forkpool._options import options
from forkpool._reaper import kill_all

__all__ = [
    "ChildDiedError",
    "ForkFuture",
    "ForkPerTaskExecutor",
    "ForkPoolError",
    "RemoteTaskError",
    "ResultNotPicklableError",
    "TaskTimeoutError",
    "kill_all",
    "options",
]
