"""forkpool: a concurrent.futures executor that forks a fresh child per task."""

from typing import TYPE_CHECKING

from forkpool._async import run_async
from forkpool._errors import (
    ChildDiedError,
    ForkPoolError,
    MoldError,
    RemoteTaskError,
    ResultNotPicklableError,
    TaskNotPicklableError,
    TaskTimeoutError,
)
from forkpool._executor import ForkPerTaskExecutor
from forkpool._future import ForkFuture
from forkpool._mold import Mold
from forkpool._options import options
from forkpool._per_process import PerProcessExecutor
from forkpool._progress import report_progress
from forkpool._usage import ResourceUsage

if TYPE_CHECKING:
    from forkpool._reaper import kill_all
    from forkpool._version import __version__

__all__ = [
    "ChildDiedError",
    "ForkFuture",
    "ForkPerTaskExecutor",
    "ForkPoolError",
    "Mold",
    "MoldError",
    "PerProcessExecutor",
    "RemoteTaskError",
    "ResourceUsage",
    "ResultNotPicklableError",
    "TaskNotPicklableError",
    "TaskTimeoutError",
    "__version__",
    "kill_all",
    "options",
    "report_progress",
    "run_async",
]


def __getattr__(name: str) -> object:
    if name == "__version__":
        # Read from the installed metadata on first use: importlib.metadata is a large
        # import, which every process importing forkpool (a mold too) would pay for.
        from forkpool._version import __version__  # noqa: PLC0415

        globals()["__version__"] = __version__
        return __version__
    # kill_all is Redis's: importing it imports redis-py, which a process without
    # Redis tracking should not carry (see forkpool._tracking).
    if name == "kill_all":
        from forkpool._reaper import kill_all  # noqa: PLC0415

        globals()["kill_all"] = kill_all  # found directly from now on
        return kill_all
    msg = f"module 'forkpool' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
