"""Per-callable settings: ``forkpool.options(timeout=..., kill_grace=...)``.

``options`` never mutates the callable it is given. It returns a thin wrapper that
carries the settings, so ``options(timeout=5)(fn)`` at a call site leaves ``fn``
untouched for every other call, and ``@options(timeout=30)`` at a definition makes
the wrapper itself the module-level name. Wrapping a wrapper merges the settings,
outer over inner, which gives the documented precedence: call site > definition >
executor.
"""

from __future__ import annotations

import enum
import functools
import math
import sys
import threading
from typing import TYPE_CHECKING, Any, Final, Generic, ParamSpec, TypeVar, cast, final

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

P = ParamSpec("P")
R = TypeVar("R")


class _Unset(enum.Enum):
    UNSET = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET
"""Marks a setting that was not given, as distinct from an explicit None."""

MAX_SECONDS: Final = threading.TIMEOUT_MAX
"""The longest duration forkpool accepts: the longest timed wait a thread can make
(about 292 years on Linux). Anything longer would overflow a wait somewhere."""

MAX_MEMORY_LIMIT: Final = 2**63 - 1
"""The largest memory limit: setrlimit() takes a C long."""


def require_callable(value: object, message: str) -> None:
    """Raise TypeError naming the type of ``value`` if it is not callable."""
    if not callable(value):
        msg = f"{message}, got {type(value).__name__}"
        raise TypeError(msg)


def check_timeout(value: object, name: str = "timeout") -> float | None:
    """Validate a timeout: None, or a finite number > 0."""
    if value is None:
        return None
    number = _as_number(value, name)
    if not math.isfinite(number) or number <= 0:
        msg = f"{name} must be None or a finite number of seconds > 0, got {value!r}"
        raise ValueError(msg)
    return _at_most_max_seconds(number, name)


def check_positive(value: object, name: str) -> float:
    """Validate a finite number of seconds > 0."""
    number = _as_number(value, name)
    if not math.isfinite(number) or number <= 0:
        msg = f"{name} must be a finite number of seconds > 0, got {value!r}"
        raise ValueError(msg)
    return _at_most_max_seconds(number, name)


def check_memory_limit(value: object, name: str = "memory_limit") -> int | None:
    """Validate a memory limit: None, or a whole number of bytes > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{name} must be None or a number of bytes (int), got {type(value).__name__}"
        raise TypeError(msg)
    if value <= 0:
        msg = f"{name} must be a number of bytes > 0, got {value}"
        raise ValueError(msg)
    if value > MAX_MEMORY_LIMIT:
        msg = f"{name} must be at most {MAX_MEMORY_LIMIT} bytes (2**63 - 1), got {value}"
        raise ValueError(msg)
    return value


def check_kill_grace(value: object, name: str = "kill_grace") -> float:
    """Validate a kill grace: a finite number >= 0."""
    number = _as_number(value, name)
    if not math.isfinite(number) or number < 0:
        msg = f"{name} must be a finite number of seconds >= 0, got {value!r}"
        raise ValueError(msg)
    return _at_most_max_seconds(number, name)


def check_close_fds(value: object, name: str = "close_fds") -> bool:
    """Validate close_fds: a bool."""
    if not isinstance(value, bool):
        msg = f"{name} must be True or False, got {type(value).__name__}"
        raise TypeError(msg)
    return value


def check_pass_fds(value: object, name: str = "pass_fds") -> tuple[int, ...]:
    """Validate pass_fds: descriptor numbers (ints >= 0), as a sorted tuple."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        msg = f"{name} must be an iterable of descriptor numbers, got {type(value).__name__}"
        raise TypeError(msg)
    fds: set[int] = set()
    for fd in cast("Iterable[object]", value):
        if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
            msg = f"{name} must hold descriptor numbers (ints >= 0), got {fd!r}"
            raise ValueError(msg)
        fds.add(fd)
    return tuple(sorted(fds))


def _at_most_max_seconds(number: float, name: str) -> float:
    if number > MAX_SECONDS:
        msg = (
            f"{name} must be at most {MAX_SECONDS:.0f} seconds (about 292 years, the "
            f"longest wait a thread can make), got {number:g}"
        )
        raise ValueError(msg)
    return number


def _as_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{name} must be a number of seconds, got {type(value).__name__}"
        raise TypeError(msg)
    return float(value)


@attrs.frozen
class TaskOptions:
    """Settings for one callable; fields left ``UNSET`` defer to the next level."""

    timeout: float | _Unset | None = UNSET
    kill_grace: float | _Unset = UNSET
    ttl: float | _Unset = UNSET
    memory_limit: int | _Unset | None = UNSET
    close_fds: bool | _Unset = UNSET
    pass_fds: tuple[int, ...] | _Unset = UNSET

    def over(self, base: TaskOptions) -> TaskOptions:
        """Return these options with unset fields taken from ``base``."""
        return TaskOptions(**_merged(self, base, attrs.fields(TaskOptions)))


@attrs.frozen
class ResolvedOptions:
    """The settings a task actually runs with, every field decided."""

    timeout: float | None
    kill_grace: float
    ttl: float
    memory_limit: int | None = None
    close_fds: bool = False
    pass_fds: tuple[int, ...] = ()


def resolve(fn: object, defaults: ResolvedOptions) -> ResolvedOptions:
    """Merge the options carried by ``fn`` over the executor's defaults."""
    if not isinstance(fn, TaskWithOptions):
        return defaults  # the common case, on the per-task path
    return ResolvedOptions(**_merged(fn.options, defaults, attrs.fields(ResolvedOptions)))


def _merged(
    over: TaskOptions, base: TaskOptions | ResolvedOptions, fields: tuple[attrs.Attribute[Any], ...]
) -> dict[str, Any]:
    return {
        field.name: getattr(base if getattr(over, field.name) is UNSET else over, field.name)
        for field in fields
    }


def options_of(fn: object) -> TaskOptions:
    """Return the options a callable carries (all unset for a plain callable)."""
    if isinstance(fn, TaskWithOptions):
        return fn.options
    return TaskOptions()


def task_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of the user's callable, for logs and Redis entries.

    Never raises: any callable runs, and naming it must not fail its task. A proxy
    whose attribute lookups raise, an instance, a mock: each falls back to the
    name of its type.
    """
    try:
        inner = unwrap(fn)
    except BaseException:  # noqa: BLE001 - isinstance() may consult a raising __class__
        inner = fn
    for describe in (_own_name, _type_name):
        try:
            # A plain str, cut by str's own slicing: a str subclass's may raise.
            name = str.__getitem__(describe(inner), slice(_NAME_MAX))
        except BaseException:  # noqa: BLE001, S112 - e.g. __getattr__ raising outside a context
            continue
        if name:
            return name
    return "<callable>"


# Names are for people reading ``forkpool ps``; a proxy's may be anything.
_NAME_MAX: Final = 200


def _own_name(fn: object) -> str:
    name = getattr(fn, "__qualname__", None)
    if not isinstance(name, str):
        return ""
    name = str.__str__(name)  # a plain copy, whatever the subclass does
    module = getattr(fn, "__module__", None)
    if not isinstance(module, str) or not str.__len__(module):
        return name
    return str.__str__(module) + "." + name


def _type_name(fn: object) -> str:
    cls = type(fn)
    return f"{cls.__module__}.{cls.__qualname__}"


def unwrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Return the user's callable under any options wrappers and partials."""
    while True:
        if isinstance(fn, TaskWithOptions):
            fn = fn.wrapped
        elif isinstance(fn, functools.partial):
            fn = fn.func
        else:
            return fn


@final
class TaskWithOptions(Generic[P, R]):
    """A callable plus its forkpool options; calling it calls the wrapped callable."""

    __slots__ = ("__dict__", "options", "wrapped")

    def __init__(self, wrapped: Callable[P, R], options: TaskOptions) -> None:
        self.wrapped = wrapped
        self.options = options
        # A class's __dict__ holds its methods (__reduce_ex__ among them): copied
        # into this wrapper's, they would shadow its own.
        updated = () if isinstance(wrapped, type) else functools.WRAPPER_UPDATES
        functools.update_wrapper(self, wrapped, updated=updated)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.wrapped(*args, **kwargs)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # Decorating a method must still bind ``self``.
        if instance is None:
            return self
        bound = functools.partial(cast("Callable[..., Any]", self.wrapped), instance)
        return TaskWithOptions(bound, self.options)

    def __repr__(self) -> str:
        return f"<forkpool options {self.options!r} for {self.wrapped!r}>"

    def __reduce__(self) -> str | tuple[Any, ...]:
        # At a definition (``@options(...) def f``) this wrapper *is* the module's ``f``:
        # pickle it by reference, as pickle would the function. Elsewhere pickle parts.
        module = sys.modules.get(getattr(self, "__module__", ""))
        qualname = getattr(self, "__qualname__", "")
        if module is not None and "." not in qualname and getattr(module, qualname, None) is self:
            return qualname
        return (TaskWithOptions, (self.wrapped, self.options))


def options(
    *,
    timeout: float | _Unset | None = UNSET,
    kill_grace: float | _Unset = UNSET,
    ttl: float | _Unset = UNSET,
    memory_limit: int | _Unset | None = UNSET,
    close_fds: bool | _Unset = UNSET,
    pass_fds: Iterable[int] | _Unset = UNSET,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Attach per-callable settings, as a decorator or at a call site.

    Args:
        timeout: Seconds the task may run before its process group is stopped;
            None means no timeout. Overrides the executor's ``timeout``.
        kill_grace: Seconds between SIGTERM and SIGKILL when the task is stopped.
        ttl: Lease length, in seconds, of the task's Redis entry (renewed by its
            owner while it runs). Must exceed twice the executor's reap_interval.
        memory_limit: Bytes of private memory the task may add beyond what its
            child inherited (not shared memory); past that, allocations raise
            MemoryError in the task. None: no cap.
        close_fds: In the child, close every inherited descriptor but stdio, the
            result pipe, logging's handlers' streams and sockets and ``pass_fds``.
        pass_fds: Descriptors a child keeps open under ``close_fds``.

    Returns:
        A function that wraps a callable with these settings, leaving it unchanged.

    Raises:
        ValueError: A setting is out of range.
        TypeError: A setting is not a number.

    Example::

        @forkpool.options(timeout=30)
        def build_report(account_id): ...

        executor.submit(forkpool.options(timeout=5)(build_report), 42)
    """
    given = TaskOptions(
        timeout=timeout if timeout is UNSET else check_timeout(timeout),
        kill_grace=kill_grace if kill_grace is UNSET else check_kill_grace(kill_grace),
        ttl=ttl if ttl is UNSET else check_positive(ttl, "ttl"),
        memory_limit=memory_limit if memory_limit is UNSET else check_memory_limit(memory_limit),
        close_fds=close_fds if close_fds is UNSET else check_close_fds(close_fds),
        pass_fds=pass_fds if pass_fds is UNSET else check_pass_fds(pass_fds),
    )

    def apply(fn: Callable[P, R]) -> Callable[P, R]:
        require_callable(fn, "forkpool.options(...) must wrap a callable")
        if isinstance(fn, TaskWithOptions):
            # Wrap the wrapper (not its inner function): a decorated module-level
            # function pickles by name only through the wrapper that owns the name.
            return TaskWithOptions(fn, given.over(fn.options))
        return TaskWithOptions(fn, given)

    return apply
