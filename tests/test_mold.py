"""Molds: tasks' children forked from a small single-threaded template process.

The executor's other contracts are checked in mold mode by running the task tests
with ``--mold`` (see conftest); these tests are about the mold itself.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import run_script, start_script, wait_for, wait_gone, written

import forkpool
from forkpool import ChildDiedError, ForkPerTaskExecutor, Mold, TaskNotPicklableError, _immortal

pytestmark = pytest.mark.timeout(120)


def _parent_and_self() -> tuple[int, int]:
    return os.getppid(), os.getpid()


def _threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    msg = f"no Threads: line for {pid}"
    raise AssertionError(msg)


def _forking_process_threads() -> int:
    """In a task: how many threads the process that forked it has right now."""
    return _threads_of(os.getppid())


def _sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _announce_and_sleep(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)


def _spawn_grandchild_and_sleep(path: str) -> None:
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    Path(path).write_text(f"{os.getpid()} {pid}")
    time.sleep(60)


def _big(n: int) -> bytes:
    return b"x" * n


def _raise_value_error(message: str) -> None:
    raise ValueError(message)


def _read_fd(fd: int) -> bytes:
    return os.read(fd, 100)


def _module_names() -> list[str]:
    return sorted(sys.modules)


@pytest.fixture(name="mold", scope="module")
def fixture_mold():
    """A fresh-interpreter mold shared by the module's tests."""
    with Mold(preload=()) as mold:
        yield mold


class TestFreshMold:
    def test_tasks_are_forked_by_the_mold(self, mold):
        """Each task's child is a fresh child of the mold, not of this process."""
        with ForkPerTaskExecutor(2, mold=mold) as ex:
            results = [ex.submit(_parent_and_self).result(timeout=20) for _ in range(3)]
        assert {parent for parent, _ in results} == {mold.pid}
        assert len({child for _, child in results}) == 3
        assert mold.pid != os.getpid()

    def test_closures_and_lambdas_travel_pickled(self, mold):
        """A lambda over a local value runs: cloudpickle takes it to the mold."""
        factor = 7
        with ForkPerTaskExecutor(1, mold=mold) as ex:
            assert ex.submit(lambda x: x * factor, 6).result(timeout=20) == 42

    def test_an_unpicklable_task_fails_its_future_at_submit(self, mold):
        """A task whose arguments do not pickle fails its own future, at once, naming why."""
        with ForkPerTaskExecutor(1, mold=mold) as ex:
            future = ex.submit(len, threading.Lock())
            assert future.done()
            with pytest.raises(TaskNotPicklableError, match=r"len\(\).*_thread.lock"):
                future.result()
            assert ex.submit(len, "four").result(timeout=20) == 4

    def test_exceptions_keep_their_type_and_traceback(self, mold):
        """A task's exception arrives as itself, with the child's traceback as its cause."""
        with ForkPerTaskExecutor(1, mold=mold) as ex:
            future = ex.submit(_raise_value_error, "from the mold's child")
            with pytest.raises(ValueError, match="from the mold's child") as info:
                future.result(timeout=20)
        assert "_raise_value_error" in str(info.value.__cause__)

    def test_a_large_result_arrives_whole(self, mold):
        """A 64 MiB result comes back over the executor's own pipe."""
        with ForkPerTaskExecutor(1, mold=mold) as ex:
            assert len(ex.submit(_big, 64 << 20).result(timeout=60)) == 64 << 20

    def test_a_timeout_stops_the_tasks_whole_group(self, mold, tmp_path):
        """At its timeout the task and the process it forked are stopped."""
        path = tmp_path / "pids"
        with ForkPerTaskExecutor(1, mold=mold, timeout=1, kill_grace=0.5) as ex:
            future = ex.submit(_spawn_grandchild_and_sleep, str(path))
            with pytest.raises(forkpool.TaskTimeoutError):
                future.result(timeout=20)
        child, grandchild = map(int, path.read_text().split())
        wait_gone(child, 5)
        wait_gone(grandchild, 5)

    def test_cancel_and_send_signal_reach_the_child(self, mold, tmp_path):
        """send_signal() reaches the running child; cancel() of another stops it."""
        with ForkPerTaskExecutor(2, mold=mold) as ex:
            first = ex.submit(_announce_and_sleep, str(tmp_path / "a"))
            second = ex.submit(_announce_and_sleep, str(tmp_path / "b"))
            written(tmp_path / "a", 20)
            second_pid = int(written(tmp_path / "b", 20))
            assert first.send_signal(signal.SIGUSR1)
            with pytest.raises(ChildDiedError, match="SIGUSR1"):
                first.result(timeout=20)
            assert second.cancel() or second.done()
            wait_gone(second_pid, 10)

    def test_rusage_and_memory_limit(self, mold):
        """The child's resource usage comes back from the mold; memory_limit caps it."""
        with ForkPerTaskExecutor(1, mold=mold, memory_limit=32 << 20) as ex:
            future = ex.submit(_big, 1 << 20)
            future.result(timeout=20)
            assert future.rusage is not None
            assert future.rusage.max_rss_bytes > 0
            with pytest.raises(MemoryError):
                ex.submit(_big, 128 << 20).result(timeout=20)

    def test_pass_fds_arrive_under_their_numbers(self, mold):
        """A descriptor in pass_fds is the same open file, under the same number, in the task."""
        ours, theirs = socket.socketpair()
        try:
            ours.sendall(b"through the mold")
            number = theirs.fileno()
            with ForkPerTaskExecutor(1, mold=mold, close_fds=True, pass_fds=[number]) as ex:
                assert ex.submit(_read_fd, number).result(timeout=20) == b"through the mold"
        finally:
            ours.close()
            theirs.close()

    @pytest.mark.slow  # starts fresh interpreters (see the noxfile)
    def test_the_preload_is_imported_in_the_mold(self):
        """Mold(preload=[...]) imports those modules once, in the mold; tasks find them."""
        with Mold(preload=["decimal"]) as mold, ForkPerTaskExecutor(1, mold=mold) as ex:
            assert "decimal" in ex.submit(_module_names).result(timeout=20)

    @pytest.mark.slow  # starts fresh interpreters (see the noxfile)
    def test_a_preload_that_fails_names_the_module(self):
        """A preload that cannot be imported fails Mold() with the import's traceback."""
        with pytest.raises(forkpool.MoldError, match="no_such_module_for_forkpool"):
            Mold(preload=["no_such_module_for_forkpool"])

    def test_preload_must_be_names(self):
        """preload takes an iterable of module names; a bare string is a TypeError."""
        with pytest.raises(TypeError, match="iterable of module names"):
            Mold(preload="numpy")  # type: ignore[arg-type]

    def test_one_mold_serves_several_executors(self, mold):
        """Two executors on one mold: both run their tasks there."""
        with (
            ForkPerTaskExecutor(1, mold=mold) as first,
            ForkPerTaskExecutor(1, mold=mold) as second,
        ):
            futures = [first.submit(_parent_and_self), second.submit(_parent_and_self)]
            assert {f.result(timeout=20)[0] for f in futures} == {mold.pid}

    @pytest.mark.slow  # starts fresh interpreters (see the noxfile)
    def test_a_forkserver_context_makes_the_executor_its_own_mold(self):
        """mp_context=get_context("forkserver"): children of a mold the executor owns."""
        context = multiprocessing.get_context("forkserver")
        with ForkPerTaskExecutor(1, mp_context=context) as ex:
            parent, _ = ex.submit(_parent_and_self).result(timeout=60)
        assert parent != os.getpid()
        wait_gone(parent, 10)  # closed with the executor


def _mold_children(mold: Mold) -> dict[int, str]:
    """The mold's children now: pid -> name (/proc/<pid>/comm)."""
    found = {}
    for pid in Path(f"/proc/{mold.pid}/task/{mold.pid}/children").read_text().split():
        with contextlib.suppress(OSError):  # gone meanwhile
            found[int(pid)] = Path(f"/proc/{pid}/comm").read_text().strip()
    return found


def _spares(mold: Mold) -> list[int]:
    return [pid for pid, name in _mold_children(mold).items() if name == "fp-spare"]


class TestSpare:
    def test_the_next_task_runs_in_a_child_forked_before_it_was_submitted(self, mold):
        """Between tasks the mold holds one spare child; the next task runs in it."""
        with ForkPerTaskExecutor(1, mold=mold) as ex:
            ex.submit(os.getpid).result(timeout=20)
            for _ in range(3):
                wait_for(lambda: len(_spares(mold)) == 1, 10, "one spare")
                (spare,) = _spares(mold)
                parent, child = ex.submit(_parent_and_self).result(timeout=20)
                assert (parent, child) == (mold.pid, spare)

    def test_a_killed_spare_is_replaced_by_a_plain_fork(self, mold):
        """SIGKILL of the waiting spare: the next task still runs, in a new child."""
        with ForkPerTaskExecutor(1, mold=mold) as ex:
            ex.submit(os.getpid).result(timeout=20)
            wait_for(lambda: len(_spares(mold)) == 1, 10, "one spare")
            (spare,) = _spares(mold)
            os.kill(spare, signal.SIGKILL)
            wait_gone(spare, 10)  # a zombie: the mold reaps it when it next needs it
            parent, child = ex.submit(_parent_and_self).result(timeout=20)
            assert parent == mold.pid
            assert child != spare
            wait_for(lambda: len(_spares(mold)) == 1, 10, "a new spare")

    def test_a_task_run_by_the_spare_is_marked_as_its_own(self, mold, redis_url, prefix):
        """The spare that takes a task leads its own group and carries the task's name and id."""
        with ForkPerTaskExecutor(1, mold=mold, redis=redis_url, key_prefix=prefix) as ex:
            ex.submit(os.getpid).result(timeout=20)
            wait_for(lambda: len(_spares(mold)) == 1, 10, "one spare")
            (spare,) = _spares(mold)
            comm, group, pid, task_id = ex.submit(_comm_group_and_task_id).result(timeout=20)
        assert pid == group == spare
        assert task_id is not None
        assert comm == f"fp-{task_id[:12]}"


def _log_all_the_time() -> None:
    """A mold initializer: a thread that holds a log handler's stream most of the time."""
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: PTH123, SIM115 - for good
    chatter = logging.getLogger("mold-chatter")
    chatter.addHandler(handler)
    chatter.propagate = False

    def log_forever() -> None:
        while True:
            chatter.warning("x" * 4000)

    threading.Thread(target=log_forever, name="chatter", daemon=True).start()


def _log_and_count_threads() -> int:
    logging.getLogger("mold-chatter").warning("a task's line")
    return _forking_process_threads()


class TestMoldWithAThread:
    @pytest.mark.slow  # starts a fresh interpreter (see the noxfile)
    def test_a_mold_whose_initializer_starts_a_thread_forks_with_the_usual_care(self):
        """A thread in the mold logging all along: 40 tasks that log all finish."""
        with (
            Mold(preload=(), initializer=_log_all_the_time) as mold,
            ForkPerTaskExecutor(2, mold=mold) as ex,
        ):
            futures = [ex.submit(_log_and_count_threads) for _ in range(40)]
            threads = [future.result(timeout=30) for future in futures]
        # The mold did have the thread: without the precautions of a threaded fork,
        # children would inherit the handler's stream locked and hang in the log call.
        assert threads == [2] * 40


# What a mold's initializer leaves for its children (see TestImmortalObjects).
_held: dict[str, object] = {}
_FLOATS = 50_000


def _hold_objects(finalized_marker: str) -> None:
    """A mold initializer: many small objects, containers to change, and one with __del__."""
    _held["floats"] = [float(i) for i in range(_FLOATS)]
    _held["table"] = {f"key{i}": [i] for i in range(1000)}
    _held["text"] = "mold"
    _held["finalizable"] = _MarksWhenFinalized(finalized_marker)


class _MarksWhenFinalized:
    def __init__(self, path: str) -> None:
        self.path = path

    def __del__(self) -> None:
        Path(self.path).write_text("finalized")


def _faults_to_sum_the_molds_floats() -> tuple[float, int]:
    """In a task: the sum of the mold's floats, and the page faults taken to compute it."""
    import resource  # noqa: PLC0415

    floats = _held["floats"]
    assert isinstance(floats, list)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    total = sum(floats)  # takes and drops a reference to each float
    return total, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _change_the_molds_containers(n: int) -> tuple[int, str, bool]:
    """In a task: change what the mold holds, then drop the last reference to one object."""
    table = _held["table"]
    assert isinstance(table, dict)
    for i in range(n):
        table[f"key{i}"].append(i)
        table[f"new{i}"] = [i] * 3
        del table[f"key{i + 500}"]
    _held["text"] = str(_held["text"]) + "+task"  # a new string from an immortal one
    finalizable = _held.pop("finalizable")
    immortal = _immortal.is_immortal(finalizable)
    del finalizable  # the last reference: an immortal object is not finalized
    return sum(len(value) for value in table.values()), str(_held["text"]), immortal


@pytest.fixture(name="holding_mold", scope="module")
def fixture_holding_mold(tmp_path_factory):
    """A fresh mold whose initializer made the objects of ``_hold_objects``."""
    marker = tmp_path_factory.mktemp("immortal") / "finalized"
    with Mold(preload=(), initializer=_hold_objects, initargs=(str(marker),)) as mold:
        yield mold, marker


class TestImmortalObjects:
    @pytest.mark.skipif(not _immortal.supported(), reason="no immortal objects here")
    def test_a_child_copies_no_page_to_use_what_the_mold_holds(self, holding_mold):
        """Summing 50,000 floats the mold made takes a child almost no page faults."""
        mold, _ = holding_mold
        with ForkPerTaskExecutor(1, mold=mold) as ex:
            total, faults = ex.submit(_faults_to_sum_the_molds_floats).result(timeout=30)
        assert total == sum(float(i) for i in range(_FLOATS))
        # The floats span about 290 pages (24 bytes each): with reference counts
        # written, each of those pages would be copied once.
        assert faults < 40
        # Only the mold's objects: nothing in this process was touched.
        assert not _immortal.is_immortal(_held)

    def test_tasks_change_what_the_mold_holds_and_each_starts_from_the_molds_copy(
        self, holding_mold
    ):
        """Tasks changing the mold's containers get one result; immortal objects never finalize."""
        mold, marker = holding_mold
        with ForkPerTaskExecutor(2, mold=mold) as ex:
            results = [ex.submit(_change_the_molds_containers, 200) for _ in range(20)]
            outcomes = {future.result(timeout=30) for future in results}
        # 1000 one-item lists, 200 of them grown by one, 200 removed, 200 new of three.
        assert outcomes == {(1000 + 200 - 200 + 600, "mold+task", _immortal.supported())}
        # Where the interpreter has no immortal objects (3.11), the task's last
        # reference did finalize the object, as anywhere else.
        assert marker.exists() is not _immortal.supported()


_FROZEN_HEAP_MODULE = """
import resource

FLOATS = [float(i) for i in range(50_000)]


def faults_to_sum():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    total = sum(FLOATS)
    return total, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""

_FREEZES_THEN_FORKS_A_MOLD = """
import gc, sys
sys.path.insert(0, {heap_dir!r})
import forkpool, frozen_heap

gc.freeze()  # as prefork servers do before they fork
with forkpool.Mold.fork() as mold, forkpool.ForkPerTaskExecutor(1, mold=mold) as ex:
    total, faults = ex.submit(frozen_heap.faults_to_sum).result(timeout=30)
print(total == sum(frozen_heap.FLOATS), faults)
"""


@pytest.mark.skipif(not _immortal.supported(), reason="no immortal objects here")
def test_a_mold_forked_from_a_program_that_froze_its_heap_makes_that_heap_immortal_too(
    tmp_path,
):
    """gc.freeze() before Mold.fork(): the frozen objects are immortal in the mold's children."""
    (tmp_path / "frozen_heap.py").write_text(_FROZEN_HEAP_MODULE)
    done = run_script(_FREEZES_THEN_FORKS_A_MOLD.format(heap_dir=str(tmp_path)), timeout=60)
    assert done.returncode == 0, done.stderr
    correct, faults = done.stdout.split()
    assert correct == "True"
    assert int(faults) < 40  # the floats span about 290 pages: none was copied


def _comm_group_and_task_id() -> tuple[str, int, int, str | None]:
    comm = Path("/proc/self/comm").read_text().strip()
    return comm, os.getpgid(0), os.getpid(), os.environ.get("FORKPOOL_TASK_ID")


class TestMoldDeath:
    @pytest.mark.slow  # starts fresh interpreters (see the noxfile)
    def test_a_dead_molds_tasks_fail_naming_it_and_a_new_mold_serves(self, tmp_path):
        """kill -9 of the mold: its running task fails naming the mold; the next runs."""
        with Mold(preload=()) as mold, ForkPerTaskExecutor(1, mold=mold) as ex:
            first_pid = mold.pid
            future = ex.submit(_announce_and_sleep, str(tmp_path / "a"))
            child = int(written(tmp_path / "a", 20))
            os.kill(first_pid, signal.SIGKILL)
            with pytest.raises(ChildDiedError, match=rf"its mold, pid {first_pid}, died"):
                future.result(timeout=20)
            wait_gone(child, 10)
            parent, _ = ex.submit(_parent_and_self).result(timeout=30)
            assert parent == mold.pid != first_pid

    @pytest.mark.slow  # starts fresh interpreters (see the noxfile)
    def test_a_closed_mold_fails_tasks_clearly(self):
        """After close(), a task for the mold fails with an error naming it closed."""
        mold = Mold(preload=())
        mold.close()
        with ForkPerTaskExecutor(1, mold=mold) as ex, pytest.raises(OSError, match="closed"):
            ex.submit(os.getpid).result(timeout=20)


_MAKES_A_MOLD_WHEN_IMPORTED = """
import forkpool

MOLD = forkpool.Mold(preload=())


def task():
    return "ran"
"""


@pytest.mark.slow  # starts fresh interpreters (see the noxfile)
def test_a_module_that_makes_a_mold_when_imported_fails_its_task_not_the_machine(
    tmp_path, monkeypatch
):
    """A task's module makes a Mold at import: its child refuses, instead of a fork bomb."""
    (tmp_path / "eager_mold_module.py").write_text(_MAKES_A_MOLD_WHEN_IMPORTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    import eager_mold_module  # noqa: PLC0415 - made just now

    try:
        with Mold(preload=()) as mold, ForkPerTaskExecutor(1, mold=mold) as ex:
            error = ex.submit(eager_mold_module.task).exception(timeout=60)
    finally:
        eager_mold_module.MOLD.close()
    assert isinstance(error, forkpool.ForkPoolError)
    assert "could not be unpickled" in str(error)
    assert "if __name__ == '__main__':" in str(error)


_DIES_WITH_ITS_MAKER = """
import os, sys, time
from pathlib import Path
import forkpool

def nap(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)

mold = forkpool.Mold(preload=())
ex = forkpool.ForkPerTaskExecutor(1, mold=mold)
ex.submit(nap, sys.argv[1])
print(mold.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.slow  # starts fresh interpreters (see the noxfile)
def test_the_mold_and_its_children_die_with_the_executors_process(tmp_path):
    """kill -9 of the process that made the mold: the mold and its task's child go."""
    path = tmp_path / "child"
    script = start_script(_DIES_WITH_ITS_MAKER.replace("sys.argv[1]", repr(str(path))))
    try:
        mold_pid = int(script.stdout.readline())  # type: ignore[union-attr]
        child = int(written(path, 20))
        script.kill()
        script.wait(10)
        wait_gone(mold_pid, 10)
        wait_gone(child, 10)
    finally:
        script.kill()
        script.communicate(timeout=10)


_STDOUT_A_FULL_PIPE = """
import fcntl, os, sys, forkpool
read_end, write_end = os.pipe()
os.set_blocking(write_end, False)
try:
    while True:
        os.write(write_end, b"x" * 65536)
except BlockingIOError:
    pass
os.set_blocking(write_end, True)
report = os.dup(1)
os.dup2(write_end, 1)
sys.stdout = open(1, "w", buffering=8192, closefd=False)  # buffered even under -u
sys.stdout.write("left in the buffer")  # flushing it would block for good
mold = forkpool.Mold.fork()
with forkpool.ForkPerTaskExecutor(1, mold=mold) as ex:
    total = ex.submit(sum, [1, 2]).result(timeout=20)
mold.close()
os.write(report, f"{total}\\n".encode())
os._exit(0)  # not sys.exit: the interpreter's last flush would block too
"""


@pytest.mark.slow  # starts a script (see the noxfile)
def test_a_mold_whose_stdout_is_a_full_pipe_still_forks():
    """Unflushed output and a full stdout pipe: the mold does not block on a flush."""
    completed = run_script(_STDOUT_A_FULL_PIPE, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "3\n"


_FORKED_EARLY_AND_LATE = """
import threading, warnings, forkpool
warnings.simplefilter("error")
early = forkpool.Mold.fork()  # one thread: no warning
stop = threading.Event()
worker = threading.Thread(target=stop.wait, name="app-worker")
worker.start()
try:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        late = forkpool.Mold.fork()
    print([str(w.message) for w in caught])
finally:
    stop.set()
    worker.join()
    early.close()
    late.close()
"""


@pytest.mark.slow  # starts fresh interpreters (see the noxfile)
def test_a_mold_forked_late_warns_naming_the_threads():
    """Mold.fork() with one thread is silent; with another thread it warns, naming it."""
    completed = run_script(_FORKED_EARLY_AND_LATE, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "app-worker" in completed.stdout
    assert "2 threads" in completed.stdout


def test_no_fork_happens_in_a_multithreaded_process(mold):
    """20 busy threads here: every task's forking process (the mold) has one thread."""
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            sum(range(1000))

    threads = [threading.Thread(target=busy, name=f"busy-{n}") for n in range(20)]
    for thread in threads:
        thread.start()
    try:
        with ForkPerTaskExecutor(2, mold=mold) as ex:
            counts = [ex.submit(_forking_process_threads).result(timeout=20) for _ in range(20)]
        assert _threads_of(os.getpid()) >= 21
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert counts == [1] * 20
