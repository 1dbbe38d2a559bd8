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
from forkpool._progress import report_progress
from forkpool._reaper import kill_all
from forkpool._usage import ResourceUsage
from forkpool._version import __version__

__all__ = [
    "ChildDiedError",
    "ForkFuture",
    "ForkPerTaskExecutor",
    "ForkPoolError",
    "RemoteTaskError",
    "ResourceUsage",
    "ResultNotPicklableError",
    "TaskTimeoutError",
    "__version__",
    "kill_all",
    "options",
    "report_progress",
]
