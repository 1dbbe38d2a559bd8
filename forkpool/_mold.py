"""Molds: small single-threaded template processes that fork the tasks' children.

A fork copies the forking process's page tables and every lock its other threads
hold. Forking from the executor's process (multi-threaded, and as big as the
application) pays for both on every task. A mold is forked or started once, while
the program is small and has one thread, and forks each task's child from then on:
the cost stays that of forking a small process, and no fork ever happens in a
multi-threaded process. What a task needs travels to the mold pickled
(cloudpickle); its result comes back over the executor's own pipe, whose write end
the mold hands to the child.

Data flow, for an executor with ``mold=``::

    executor's process                        mold (one thread)         task's child
    ------------------                        -----------------         ------------
    submit(): cloudpickle (fn, args, ...)
    supervisor: pipe, memfd with the payload
      SPAWN + [pipe's write end, memfd] ---->  fork ------------------> unpickle, run
      <---------------------------- FORKED(pid)                          result --+
      pidfd, result pipe, deadlines: as for a fork of its own    <-----------------+
      child exited (pidfd) -> REAP(pid) ---->  wait4
      <------------------ REAPED(status, rusage)
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any, Final, cast

import attrs
import cloudpickle

from forkpool import _fork, _linux, _mold_process, _procfs, _quiet_fork
from forkpool._errors import MoldError
from forkpool._options import require_callable
from forkpool._spawn import Reaped, Spawned

if TYPE_CHECKING:
    from collections.abc import Callable, Container, Iterable
    from types import TracebackType
    from typing import Self

# How long the executor waits for a mold's answer. A mold answers in microseconds;
# one that does not within this is stopped, or dead, and is replaced.
_ANSWER_WAIT: Final = 30.0
# How long a fresh interpreter has to import its preload and run its initializer.
_START_WAIT: Final = 300.0
# How long close() waits for the mold to stop its children and exit.
_EXIT_WAIT: Final = 10.0

_warned_threads = False


@attrs.define(eq=False)
class _Process:
    """One incarnation of a mold: its process and the socket to it."""

    pid: int
    sock: socket.socket
    generation: int
    popen: subprocess.Popen[bytes] | None
    dead: str = ""  # how it ended, once it has


class Mold:
    """A single-threaded template process that forks tasks' children for executors.

    ``Mold(preload=..., initializer=..., initargs=...)`` starts a fresh interpreter,
    which imports the ``preload`` modules and runs the initializer: nothing is
    inherited, so it is safe to make at any moment. The default preload is the
    program's ``__main__`` (imported as multiprocessing's forkserver imports it, so
    its ``if __name__ == "__main__":`` block does not run).

    :meth:`Mold.fork` forks one from this process instead: it inherits everything
    loaded so far. Make it early, before threads start.

    Pass it to executors (``ForkPerTaskExecutor(mold=mold)``); one mold serves any
    number of them. It dies with the process that made it, or at :meth:`close`
    (``with Mold() as mold:``), stopping the children it forked. If it dies, the
    tasks it was running fail with an error that names it, and it is started again
    for the next ones.

    Once set up, the mold makes every object it holds immortal (CPython 3.12+), so
    that its children do not copy its pages to count references: an object of the
    mold's that a task drops is never freed or finalized in the child.
    """

    def __init__(
        self,
        preload: Iterable[str] | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        """Start a fresh interpreter as a mold (see the class docstring).

        Raises:
            TypeError: ``preload`` is not strings, or ``initializer`` not callable.
            MoldError: The interpreter could not import the preload or run the
                initializer; the message has its traceback.
        """
        self._preload: tuple[str, ...] | None = _check_preload(preload)
        self._init(initializer, initargs)
        self._process = self._start()

    @classmethod
    def fork(
        cls, initializer: Callable[..., object] | None = None, initargs: tuple[Any, ...] = ()
    ) -> Self:
        """A mold forked from this process: it inherits everything loaded so far.

        Made while the process has one thread, it is a faithful copy. Made later, it
        warns once, naming the threads: the fork copies whatever locks they held.
        The mold's inherited descriptors (sockets, files) are pointed at /dev/null,
        as ``close_fds`` does for a task; stdio and logging's outputs are kept.
        """
        self = cls.__new__(cls)
        self._preload = None
        self._init(initializer, initargs)
        self._process = self._start()
        return self

    def _init(self, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
        if _mold_process.bootstrapping():
            # A module that makes a mold when imported, imported by a mold (its
            # preload) or by a mold's child (unpickling a task of it): each new mold
            # would import it again, and so on, until memory runs out.
            msg = (
                "a Mold cannot be made while a mold imports code for a task or a preload: "
                "a module made one at import time. Make molds under "
                "`if __name__ == '__main__':` or inside a function, as with multiprocessing"
            )
            raise MoldError(msg)
        if initializer is not None:
            require_callable(initializer, "Mold initializer must be callable or None")
        if not isinstance(cast("object", initargs), tuple):
            msg = f"Mold initargs must be a tuple, got {type(initargs).__name__}"
            raise TypeError(msg)
        self._initializer = initializer
        self._initargs = initargs
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()
        self._generation = 0
        self._closed = False

    # --- the public side -------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The mold's process id now (a new one after it was started again)."""
        return self._process.pid

    def close(self) -> None:
        """Stop the mold: its children are killed, and it exits. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            process = self._process
        if os.getpid() == self._owner_pid:
            _stop(process)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        how = "forked" if self._preload is None else f"preload={list(self._preload)!r}"
        state = "closed" if self._closed else f"pid={self._process.pid}"
        return f"<forkpool.Mold {how} {state}>"

    # --- for executors ---------------------------------------------------------------------

    def spawner(self) -> MoldSpawner:
        """The seam for one executor's supervisor (see ``_spawn``)."""
        return MoldSpawner(self)

    def request(
        self, kind: int, body: object, fds: tuple[int, ...] = ()
    ) -> tuple[_Process, int, Any]:
        """Ask the mold; (the incarnation that answered, kind, body).

        A mold found dead is started again, once, for a SPAWN.

        Raises:
            MoldError: The mold is closed, dead (for REAP), or could not be started.
        """
        with self._lock:
            if self._closed:
                msg = f"{self!r} is closed"
                raise MoldError(msg)
            if os.getpid() != self._owner_pid:
                msg = f"{self!r} belongs to process {self._owner_pid}, not to this one"
                raise MoldError(msg)
            process = self._process
            if process.dead and kind == _mold_process.SPAWN:
                process = self._process = self._start()
            answer = _ask(process, kind, body, fds)
            if answer is None and kind == _mold_process.SPAWN:
                process = self._process = self._start()
                answer = _ask(process, kind, body, fds)
            if answer is None:
                msg = f"{self!r} died ({process.dead})"
                raise MoldError(msg)
            return (process, *answer)

    def is_current(self, generation: int) -> bool:
        """The incarnation ``generation`` is the live one."""
        process = self._process
        return process.generation == generation and not process.dead

    def describe(self, generation: int) -> str:
        """How incarnation ``generation`` ended, for a task that died with it."""
        process = self._process
        if process.generation == generation and process.dead:
            return f"its mold, pid {process.pid}, died ({process.dead})"
        return "its mold died"

    # --- starting --------------------------------------------------------------------------

    def _start(self) -> _Process:
        self._generation += 1
        if self._preload is None:
            return _fork_mold(self._generation, self._initializer, self._initargs)
        setup = (
            None
            if self._initializer is None
            else cloudpickle.dumps((self._initializer, self._initargs))
        )
        return _start_fresh(self._generation, self._preload, setup)


def _check_preload(preload: Iterable[str] | None) -> tuple[str, ...]:
    if preload is None:
        return ("__main__",)
    if isinstance(preload, str):
        msg = f"Mold(preload=...) takes an iterable of module names, got the string {preload!r}"
        raise TypeError(msg)
    names: tuple[object, ...] = tuple(preload)
    for name in names:
        if not isinstance(name, str):
            msg = f"Mold(preload=...) takes module names (str), got {name!r}"
            raise TypeError(msg)
    return cast("tuple[str, ...]", names)


def _ask(
    process: _Process, kind: int, body: object, fds: tuple[int, ...]
) -> tuple[int, Any] | None:
    """One request and its answer; None if the mold is dead (``process.dead`` says how)."""
    if process.dead:
        return None
    try:
        _mold_process.send(process.sock, kind, body, fds)
        answer = _mold_process.receive(process.sock)
    except OSError as exc:
        answer = None
        _bury(process, f"its socket failed: {exc}")
    if answer is None:
        _bury(process, "")
        return None
    answer_kind, answer_body, extra = answer
    for fd in extra:
        os.close(fd)
    return answer_kind, answer_body


def _bury(process: _Process, why: str) -> None:
    """The mold is gone or useless: make sure, reap it, and say how it ended."""
    if process.dead:
        return
    with contextlib.suppress(OSError):
        os.kill(process.pid, signal.SIGKILL)
    status = _wait(process, _EXIT_WAIT)
    process.sock.close()
    how = why or _describe(status)
    process.dead = how or "it exited"


def _describe(status: int | None) -> str:
    if status is None:
        return "its exit status is unknown"
    exitcode, signum = _fork.describe_status(status)
    if signum is not None:
        return f"killed by {signal.Signals(signum).name}"
    return f"exit code {exitcode}"


def _wait(process: _Process, timeout: float) -> int | None:
    """Reap the mold's process; its wait status (None if unknown)."""
    if process.popen is not None:
        try:
            process.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()
        code = process.popen.returncode
        return (-code) & 0x7F if code < 0 else code << 8
    try:
        _, status = os.waitpid(process.pid, 0)
    except ChildProcessError:
        return None
    return status


def _stop(process: _Process) -> None:
    """Close the socket: the mold kills its children and exits; reap it."""
    if process.dead:
        return
    process.sock.close()
    _wait(process, _EXIT_WAIT)
    process.dead = "closed"


def _start_fresh(generation: int, preload: tuple[str, ...], setup: bytes | None) -> _Process:
    """A fresh interpreter, prepared as multiprocessing's forkserver prepares its own."""
    import multiprocessing.spawn  # noqa: PLC0415 - only for fresh molds

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        popen = subprocess.Popen(  # noqa: S603 - this interpreter, our module
            [
                sys.executable,
                "-c",
                "from forkpool._mold_process import main; main()",
                str(theirs.fileno()),
            ],
            pass_fds=(theirs.fileno(),),
        )
    finally:
        theirs.close()
    process = _Process(popen.pid, ours, generation, popen)
    preparation = multiprocessing.spawn.get_preparation_data("forkpool-mold")
    if "authkey" in preparation:  # pickles only as plain bytes
        preparation["authkey"] = bytes(preparation["authkey"])
    try:
        _mold_process.send(ours, 0, (preparation, preload, setup))
        ours.settimeout(_START_WAIT)
        answer = _mold_process.receive(ours)
        ours.settimeout(_ANSWER_WAIT)
    except OSError as exc:
        _bury(process, str(exc))
        msg = f"the mold could not be started: {exc}"
        raise MoldError(msg) from exc
    if answer is None or answer[0] != _mold_process.READY:
        detail = answer[1][1] if answer is not None else "it exited"
        _bury(process, "it failed to start")
        msg = f"the mold (preload={list(preload)!r}) could not be started:\n{detail}"
        raise MoldError(msg)
    return process


def _fork_mold(
    generation: int, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
) -> _Process:
    """Fork this process into a mold (see Mold.fork)."""
    _warn_about_threads()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    held = _quiet_fork.hold_filters()
    try:
        pid = _quiet_fork.fork(())
        if pid == 0:
            _quiet_fork.release_filters(held)
            _become_mold(theirs, ours, initializer, initargs)
    finally:
        _quiet_fork.release_filters(held)
    theirs.close()
    ours.settimeout(_START_WAIT)
    try:
        answer = _mold_process.receive(ours)
    except OSError as exc:
        answer = None
        detail = str(exc)
    else:
        detail = "" if answer is None else str(answer[1])
    process = _Process(pid, ours, generation, None)
    if answer is None or answer[0] != _mold_process.READY:
        _bury(process, "it failed to start")
        msg = f"the forked mold could not be started:\n{detail}"
        raise MoldError(msg)
    ours.settimeout(_ANSWER_WAIT)
    return process


def _become_mold(
    sock: socket.socket,
    other_end: socket.socket,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> None:
    """In the forked mold: leave the parent's state behind, set up, then serve."""
    status = 1
    try:
        other_end.close()
        for signum in _fork.signals_to_reset():
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, signal.SIG_DFL)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        _fork.neutralize_inherited_fds({0, 1, 2, sock.fileno()})
        if initializer is not None:
            initializer(*initargs)
        _mold_process.send(sock, _mold_process.READY, os.getpid())
        status = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the process that forked it
        with contextlib.suppress(BaseException):
            _mold_process.send(sock, _mold_process.FAILED, (0, repr(exc)))
    finally:
        if status:
            os._exit(status)
    _mold_process.serve(sock)


def _warn_about_threads() -> None:
    global _warned_threads  # noqa: PLW0603 - once per process
    threads = [thread.name for thread in threading.enumerate()]
    native = _linux.thread_count()
    if len(threads) <= 1 and native <= 1:
        return
    if _warned_threads:
        return
    _warned_threads = True
    warnings.warn(
        f"forkpool.Mold.fork() in a process with {max(native, len(threads))} threads "
        f"({', '.join(threads)}): the mold copies whatever locks they hold at this "
        "instant. Make the mold before threads start, or use forkpool.Mold(), which "
        "starts a fresh interpreter",
        RuntimeWarning,
        stacklevel=4,
    )


class MoldSpawner:
    """The seam's mold side, for one executor's supervisor (see ``_spawn.Spawner``)."""

    def __init__(self, mold: Mold) -> None:
        self._mold = mold
        # Each running child, with the incarnation of the mold that forked it.
        self._children: dict[int, int] = {}

    def adopt_thread(self) -> None:
        """Block signals in the supervisor thread, as every forkpool thread does."""
        _fork.block_signals_in_this_thread()

    def spawn(
        self,
        task: _fork.ChildTask,
        read_fd: int,
        write_fd: int,
        close_in_child: Iterable[int],
        siblings: Container[int],
    ) -> Spawned:
        """Hand the task to the mold, which forks its child (or gives it to its spare)."""
        del close_in_child, siblings  # the mold's child has none of ours
        if task.pickled is None:
            msg = "a mold's task must be pickled at submit"
            raise RuntimeError(msg)
        payload = os.memfd_create("forkpool-task", os.MFD_CLOEXEC)
        try:
            _write_all(payload, task.pickled)
            passed = tuple((fd, os.get_inheritable(fd)) for fd in task.pass_fds)
            body = (
                task.task_id,
                task.memory_limit,
                task.keep_fds is not None,
                passed,
                os.getpid(),
                read_fd,
            )
            try:
                process, kind, answer = self._mold.request(
                    _mold_process.SPAWN, body, (write_fd, payload, *task.pass_fds)
                )
            except MoldError as exc:
                raise OSError(0, str(exc)) from exc
        finally:
            os.close(payload)
        if kind != _mold_process.FORKED:
            errno, message = answer
            raise OSError(errno, f"the mold could not fork: {message}")
        pid, resident = answer
        self._children[pid] = process.generation
        return Spawned(pid, resident)

    def running(self, pid: int) -> bool:
        """Not exited: the mold reaps only when asked, so exited means a zombie."""
        if not self.unreaped(pid):
            return False
        stat = _procfs.read_stat(pid)
        return stat is not None and stat.state not in {"Z", "X"}

    def unreaped(self, pid: int) -> bool:
        """Its mold is the one alive: only then are the pid and group still the child's."""
        generation = self._children.get(pid)
        return generation is not None and self._mold.is_current(generation)

    def reap(self, pid: int) -> Reaped:
        """Ask the mold to reap it; its status and resource usage."""
        generation = self._children.pop(pid, None)
        if generation is None or not self._mold.is_current(generation):
            return Reaped(-1, None, self._mold.describe(generation or 0))
        try:
            _, kind, answer = self._mold.request(_mold_process.REAP, pid)
        except MoldError:
            return Reaped(-1, None, self._mold.describe(generation))
        if kind != _mold_process.REAPED:
            return Reaped(-1, None, f"its mold could not reap it: {answer[1]}")
        status, usage = answer
        rusage = None if usage is None else resource.struct_rusage(usage)
        return Reaped(status, rusage)

    def close(self) -> None:
        """The mold is shared: nothing of it is this spawner's to close."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
