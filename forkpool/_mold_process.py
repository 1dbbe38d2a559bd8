"""Inside a mold: the loop that forks tasks' children on request, and reaps them when told.

Facts this loop is built on:

* The mold has one thread, always: it starts none, and nothing it runs between
  requests (only forkpool's code and the user's preload and initializer, once)
  is allowed to. So each fork copies no lock another thread held, and the mold
  forks without taking or replacing any (``Forker.stay_alone``): every page the
  mold touches between forks is a copy-on-write fault, so its loop does as
  little as it can. Should the setup have started a thread after all, the mold
  forks with the usual care instead.
* It never unpickles a task. The payload is handed to the child in a memfd and
  unpickled there: a payload that fails to unpickle, or whose unpickling crashes
  the process, fails its own task and leaves the mold as it was.
* It reaps a child only when the executor asks (``REAP``), after the executor has
  seen it exit. Until then the child's pid and process group id stay the child's,
  so the executor can signal them without ever reaching a stranger.
* It lives as long as its socket: end of file means the process that made it is
  gone (or closed it), and it kills each child's process group and exits.
* Its children die with it (``PR_SET_PDEATHSIG``, set in each child, fires when the
  mold's one thread exits).
* It forks one child ahead, a spare, whenever it has nothing else to do. The spare
  settles in (signals, streams, process group: all that needs no task) and waits
  for a task on a socket of its own; a SPAWN hands it the task. A task's latency
  then holds no fork at all. A spare found dead is replaced by a plain fork.
"""

from __future__ import annotations

import _socket  # the C layer of `socket`: its objects cost no Python code to make or close
import contextlib
import fcntl
import gc
import os
import pickle
import select
import signal
import socket
import struct
import sys
import traceback
from typing import TYPE_CHECKING, Any, Final, NoReturn

import attrs

from forkpool import _fork, _immortal, _linux, _procfs

if TYPE_CHECKING:
    from collections.abc import Callable

# Requests and replies: a 1-byte kind and a 4-byte length, then a pickled body
# (plain values only: tuples, ints, strings) and, with SPAWN, descriptors.
HEADER: Final = struct.Struct("!BI")
SPAWN, REAP, READY, FORKED, REAPED, FAILED = 1, 2, 3, 4, 5, 6
# At most this many descriptors come with one request (the result pipe, the
# payload, and a task's pass_fds).
MAX_FDS: Final = 253
# The first descriptor number a task's passed descriptors are parked at in the
# child, above the numbers they must end up at.
_PARK_FROM: Final = 100
# A descriptor in an SCM_RIGHTS message, and room for as many as a request carries.
_FD: Final = struct.Struct("i")
_RIGHTS_SPACE: Final = socket.CMSG_SPACE(MAX_FDS * _FD.size)
# A spare's name (/proc/<pid>/comm) until its task's marks it.
_SPARE_NAME: Final = b"fp-spare"


def send(sock: _socket.socket, kind: int, body: object, fds: tuple[int, ...] = ()) -> None:
    """One message: header and body in one write, the descriptors riding on it."""
    data = pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL)
    message = HEADER.pack(kind, len(data)) + data
    if fds:
        rights = struct.pack(f"{len(fds)}i", *fds)
        sent = sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
    else:
        sent = sock.send(message)
    if sent < len(message):
        sock.sendall(memoryview(message)[sent:])


def receive(sock: _socket.socket) -> tuple[int, Any, list[int]] | None:
    """One message: (kind, body, descriptors), or None at end of file."""
    head, ancillary, _, _ = sock.recvmsg(HEADER.size, _RIGHTS_SPACE)
    fds: list[int] = [
        fd
        for level, cmsg_type, rights in ancillary
        if level == socket.SOL_SOCKET and cmsg_type == socket.SCM_RIGHTS
        for (fd,) in _FD.iter_unpack(rights[: len(rights) - len(rights) % _FD.size])
    ]
    if not head:
        _close_all(fds)
        return None
    while len(head) < HEADER.size:
        more = sock.recv(HEADER.size - len(head))
        if not more:
            _close_all(fds)
            return None
        head += more
    kind, size = HEADER.unpack(head)
    data = bytearray()
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            _close_all(fds)
            return None
        data += more
    return kind, pickle.loads(data), fds  # noqa: S301 - from our own executor or mold


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


@attrs.define
class _Spare:
    """A child forked ahead, waiting on ``sock`` for a task."""

    pid: int
    sock: _socket.socket


def serve(sock: socket.socket) -> NoReturn:
    """The mold's life: fork on SPAWN, reap on REAP, until end of file."""
    _linux.set_name(_linux.comm_name(_procfs.MOLD_COMM))  # see the reaper
    forker = _fork.Forker()
    forker.adopt_thread()
    children: set[int] = set()
    spare: _Spare | None = None
    # One poll object for good: select.select() would build new lists each time.
    requests = select.poll()
    requests.register(sock, select.POLLIN)
    # Whatever setup allocated stays put: children's cycle collections skip it, and
    # neither they nor this loop copy a page to count a reference to it (see
    # _immortal). Heap that setup freed goes back to the OS: each fork copies, and
    # each child's exit tears down, the page table entries of every page still mapped.
    gc.collect()
    _immortal.make_everything_immortal((sock, forker, children, requests))
    gc.freeze()
    _linux.trim_heap()
    forker.stay_alone()  # one thread, unless the setup started one: then the usual care
    try:
        while True:
            # A request already waiting is answered before a spare is forked.
            if spare is None and not requests.poll(0):
                spare = _fork_spare(sock, forker, children)
            message = receive(sock)
            if message is None:
                break
            kind, body, fds = message
            if kind == SPAWN:
                _spawn(sock, forker, body, fds, children, spare=spare)
                spare = None  # used, or found dead: the loop forks another when idle
            elif kind == REAP:
                _reap(sock, body, children)
            else:
                _close_all(fds)
                send(sock, FAILED, (0, f"unknown request {kind}"))
    except OSError:
        pass  # the socket broke: the executor's process is gone
    finally:
        if spare is not None:
            children.add(spare.pid)
        for pid in children:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
    os._exit(0)


def _fork_spare(sock: socket.socket, forker: _fork.Forker, children: set[int]) -> _Spare | None:
    """Fork a spare child (None if fork fails: the next SPAWN forks as usual)."""
    ours, theirs = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def wait_for_task() -> _fork.Assignment | None:
        # In the spare. Its name says what it is until the task's marks it.
        _linux.set_name(_SPARE_NAME)
        message = receive(theirs)
        theirs.close()
        if message is None:
            return None  # the mold let it go
        _, body, fds = message
        task, read_fd, write_fd, pipe_owner = _task_of(body, fds)
        return forker.assignment(task, read_fd, write_fd, pipe_owner)

    try:
        pid = forker.fork_spare(wait_for_task, [sock.fileno(), ours.fileno()], children)
    except OSError:
        ours.close()
        return None
    finally:
        theirs.close()
    try:  # noqa: SIM105 - not contextlib.suppress: here each object made is a page faulted
        os.setpgid(pid, pid)  # as the child does: the group exists before we answer
    except OSError:
        pass
    return _Spare(pid, ours)


def _spawn(
    sock: socket.socket,
    forker: _fork.Forker,
    body: tuple[Any, ...],
    fds: list[int],
    children: set[int],
    *,
    spare: _Spare | None,
) -> None:
    """Start the task's child: the spare takes the task, or (gone) a new fork does.

    The answer carries the child's resident set before its task began: the spare's
    is read before it has the task, a new fork's right after fork.
    """
    try:
        pid = resident = None
        if spare is not None:
            resident = _procfs.resident_bytes(spare.pid)
            pid = _hand_over(spare, body, fds)
        if pid is None:
            task, read_fd, write_fd, pipe_owner = _task_of(body, fds)
            try:
                pid = forker.fork(
                    task, read_fd, write_fd, [sock.fileno()], children, pipe_owner=pipe_owner
                )
            except OSError as exc:
                send(sock, FAILED, (exc.errno or 0, str(exc)))
                return
            resident = _procfs.resident_bytes(pid)
            with contextlib.suppress(OSError):
                os.setpgid(pid, pid)  # as the child does: the group exists before we answer
    finally:
        _close_all(fds)
    children.add(pid)
    send(sock, FORKED, (pid, resident))


def _hand_over(spare: _Spare, body: tuple[Any, ...], fds: list[int]) -> int | None:
    """Give the task to the spare: its pid, or None if it is gone (then reaped)."""
    try:
        send(spare.sock, SPAWN, body, tuple(fds))
    except OSError:
        with contextlib.suppress(OSError):
            os.kill(spare.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(spare.pid, 0)
        return None
    finally:
        spare.sock.close()
    return spare.pid


def _task_of(body: tuple[Any, ...], fds: list[int]) -> tuple[_fork.ChildTask, int, int, int]:
    """A SPAWN's task for ``_run_pickled``: (task, read_fd, write_fd, pipe_owner)."""
    task_id, memory_limit, close_fds, passed, pipe_owner, pipe_read_fd = body
    write_fd, payload_fd, *received = fds
    targets = tuple(number for number, _ in passed)
    keep = (payload_fd, *received) if close_fds else None
    task = _fork.ChildTask(
        fn=_run_pickled,
        args=(payload_fd, tuple(zip(received, passed, strict=True))),
        kwargs={},
        task_id=task_id,
        memory_limit=memory_limit,
        keep_fds=None if keep is None else (*keep, *targets),
    )
    return task, pipe_read_fd, write_fd, pipe_owner


def _reap(sock: socket.socket, pid: int, children: set[int]) -> None:
    if pid not in children:
        send(sock, FAILED, (0, f"pid {pid} is not a child of this mold"))
        return
    children.discard(pid)
    try:
        _, status, rusage = os.wait4(pid, 0)
    except ChildProcessError:
        send(sock, REAPED, (-1, None))
        return
    send(sock, REAPED, (status, tuple(rusage)))


class _Bootstrap:
    """Set while a mold imports code on someone's behalf (see ``bootstrapping``)."""

    active = False


def bootstrapping() -> bool:
    """This is a mold, or a mold's child, importing a preload or unpickling a task."""
    return _Bootstrap.active


def _run_pickled(payload_fd: int, passed: tuple[tuple[int, tuple[int, bool]], ...]) -> object:
    """In a task's child: read and unpickle the task, then run it as a fork would.

    The payload is (fn, args, kwargs, child_post_fork, initializer, initargs,
    prelude), as the executor pickled it at submit.
    """
    import cloudpickle  # noqa: PLC0415 - the child's, not the mold's, import

    size = os.fstat(payload_fd).st_size
    data = os.pread(payload_fd, size, 0) if size else b""
    os.close(payload_fd)
    _place_passed_fds(passed)
    _Bootstrap.active = True
    try:
        fn, args, kwargs, child_post_fork, initializer, initargs, prelude = cloudpickle.loads(data)
    except BaseException as exc:
        from forkpool._errors import ForkPoolError  # noqa: PLC0415

        msg = f"the task could not be unpickled in its mold's child: {exc!r}"
        raise ForkPoolError(msg) from exc
    finally:
        _Bootstrap.active = False
    del data
    if prelude is not None:
        prelude()
    if child_post_fork is not None:
        child_post_fork(fn, args, kwargs)
    if initializer is not None:
        initializer(*initargs)
    call: Callable[..., object] = fn
    return call(*args, **kwargs)


def _place_passed_fds(passed: tuple[tuple[int, tuple[int, bool]], ...]) -> None:
    """Give each descriptor passed to the task the number it had in the executor."""
    # Parked above every target first, so that placing one never overwrites another.
    floor = _PARK_FROM + max((number for _, (number, _) in passed), default=0)
    parked = []
    for received, (_, inheritable) in passed:
        high = fcntl.fcntl(received, fcntl.F_DUPFD_CLOEXEC, floor)
        os.close(received)
        parked.append((high, inheritable))
    for (high, inheritable), (_, (number, _)) in zip(parked, passed, strict=True):
        os.dup2(high, number, inheritable=inheritable)
        os.close(high)


def main() -> NoReturn:
    """A fresh interpreter's mold (``python -c``): set up as asked, then serve."""
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        message = receive(sock)
        if message is None:
            os._exit(0)
        _, recipe, _ = message
        _prepare(*recipe)
    except BaseException as exc:  # noqa: BLE001 - reported to the process that made it
        detail = "".join(traceback.format_exception(exc))
        with contextlib.suppress(OSError):
            send(sock, FAILED, (0, detail))
        os._exit(1)
    send(sock, READY, os.getpid())
    serve(sock)


def _prepare(preparation: dict[str, Any], preload: tuple[str, ...], setup: bytes | None) -> None:
    """Be the caller's program as multiprocessing's forkserver would, then preload."""
    import multiprocessing.spawn  # noqa: PLC0415

    import cloudpickle  # noqa: PLC0415

    _Bootstrap.active = True  # left set: this process only ever serves, from here on
    main_path = preparation.pop("init_main_from_path", None)
    preparation.pop("init_main_from_name", None)
    multiprocessing.spawn.prepare(preparation)
    if "__main__" in preload and main_path is not None:
        multiprocessing.spawn.import_main_path(main_path)
    for name in preload:
        if name != "__main__":
            __import__(name)
    if setup is not None:
        initializer, initargs = cloudpickle.loads(setup)
        initializer(*initargs)
