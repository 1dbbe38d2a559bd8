"""The executor's basic contract: results, arguments, map, limits, validation."""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os
import socket
import threading
import time
import weakref
from concurrent.futures import Executor, Future, as_completed, wait

import pytest
from helpers import Blob, wait_for

import forkpool
from forkpool import ForkFuture, ForkPerTaskExecutor, _linux
from forkpool._errors import platform_error


@pytest.fixture(name="ex")
def fixture_ex():
    with ForkPerTaskExecutor(max_workers=2) as ex:
        yield ex


def _divide(a: int, b: int) -> float:
    return a / b


def _double(x: int) -> int:
    return x * 2


class TestResults:
    def test_result_comes_from_a_different_process(self, ex):
        """Each task runs in a child whose pid is on the future."""
        future = ex.submit(os.getpid)
        pid = future.result(timeout=10)
        assert pid != os.getpid()
        assert future.pid == pid

    def test_every_task_gets_a_fresh_child(self, ex):
        """No two tasks share a process."""
        pids = [f.result(timeout=10) for f in [ex.submit(os.getpid) for _ in range(20)]]
        assert len(set(pids)) == 20

    def test_global_state_dies_with_the_child(self, ex):
        """A task's change to module state is invisible to the parent and later tasks."""
        state = {"n": 0}

        def bump():
            state["n"] += 1
            return state["n"]

        assert [ex.submit(bump).result(timeout=10) for _ in range(3)] == [1, 1, 1]
        assert state["n"] == 0

    def test_future_is_a_concurrent_future(self, ex):
        """ForkFuture works with wait() and as_completed()."""
        futures = [ex.submit(_double, i) for i in range(6)]
        assert all(isinstance(f, Future) and isinstance(f, ForkFuture) for f in futures)
        done, not_done = wait(futures, timeout=10)
        assert len(done) == 6
        assert not not_done
        assert sorted(f.result() for f in as_completed(futures, timeout=10)) == [
            0,
            2,
            4,
            6,
            8,
            10,
        ]

    def test_large_result(self, ex):
        """A 64 MiB result arrives intact."""
        size = 64 << 20
        data = ex.submit(lambda: bytes(range(256)) * (size // 256)).result(timeout=30)
        assert len(data) == size
        assert data[:256] == bytes(range(256))
        assert data[-256:] == bytes(range(256))

    @pytest.mark.parametrize("splice", [True, False], ids=["vmsplice", "write"])
    @pytest.mark.parametrize("kind", [bytes, bytearray], ids=["bytes", "bytearray"])
    def test_large_blob_keeps_its_type(self, ex, kind, splice, monkeypatch):
        """A large top-level bytes/bytearray result comes back intact and of its own type."""
        if not splice:
            monkeypatch.setattr(_linux, "_vmsplice", None)  # children inherit it
        seed = os.urandom(4096)
        data = ex.submit(lambda: kind(seed * 4096)).result(timeout=30)
        assert type(data) is kind
        assert data == seed * 4096

    def test_out_of_band_buffers_at_any_depth(self, ex):
        """Several PickleBuffer-backed objects nested in a result all arrive intact."""
        blobs = [os.urandom(n) for n in (1 << 20, 100, 3 << 20)]
        result = ex.submit(lambda: {"blobs": [Blob(b) for b in blobs], "n": 3}).result(timeout=30)
        assert result["n"] == 3
        assert [bytes(blob.data) for blob in result["blobs"]] == blobs
        assert all(type(blob.data) is bytearray for blob in result["blobs"])

    def test_result_of_a_local_class(self, ex):
        """Results may be instances of classes defined in a function (cloudpickle)."""

        class Point:
            def __init__(self, x: int) -> None:
                self.x = x

        point = ex.submit(lambda: Point(7)).result(timeout=10)
        assert point.x == 7
        assert type(point).__name__ == "Point"

    def test_none_and_kwargs(self, ex):
        """Keyword arguments arrive, and None is a result like any other."""
        assert ex.submit(dict, a=1, b=2).result(timeout=10) == {"a": 1, "b": 2}
        assert ex.submit(lambda: None).result(timeout=10) is None


class TestArgumentsAreInherited:
    def test_lambda_and_closure(self, ex):
        """Lambdas and closures run without being pickled."""
        factor = 3
        assert ex.submit(lambda x: x * factor, 5).result(timeout=10) == 15

    @pytest.mark.fork_only  # its arguments are made not to pickle
    def test_unpicklable_arguments(self, ex):
        """Locks and sockets are usable as arguments: the child inherits them."""
        lock = threading.Lock()
        left, right = socket.socketpair()
        with left, right:

            def use(lock: threading.Lock, sock: socket.socket) -> str:
                with lock:
                    sock.sendall(b"hello from the child")
                return "sent"

            assert ex.submit(use, lock, left).result(timeout=10) == "sent"
            right.settimeout(10)
            assert right.recv(100) == b"hello from the child"

    def test_references_are_dropped(self, ex):
        """The executor keeps neither the arguments nor, once dropped, the result."""

        class Payload:
            pass

        argument, result_holder = Payload(), []
        argument_ref = weakref.ref(argument)
        future = ex.submit(lambda p: Payload() if p else None, argument)
        result_holder.append(future.result(timeout=10))
        result_ref = weakref.ref(result_holder[0])
        del argument, future
        result_holder.clear()
        wait_for(lambda: argument_ref() is None and result_ref() is None, 10, "references")


class TestMap:
    def test_map_in_order(self, ex):
        """map() yields results in input order."""
        assert list(ex.map(_double, range(10))) == [x * 2 for x in range(10)]

    def test_map_with_several_iterables(self, ex):
        """map() zips its iterables, stopping at the shortest."""
        assert list(ex.map(pow, [2, 3, 4], [2, 2])) == [4, 9]

    def test_chunks_run_in_one_child_each(self, ex):
        """With chunksize=n, n consecutive calls share a child."""
        pids = list(ex.map(lambda _: os.getpid(), range(10), chunksize=4))
        assert len(pids) == 10
        assert len(set(pids[0:4])) == 1
        assert len(set(pids[4:8])) == 1
        assert len(set(pids[8:10])) == 1
        assert len(set(pids)) == 3

    def test_map_timeout(self, ex):
        """A map() result not ready in time raises TimeoutError and stops the work."""
        results = ex.map(time.sleep, [30, 30], timeout=0.5)
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)

    def test_bad_chunksize(self, ex):
        """chunksize below 1 is a ValueError."""
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(_double, [1], chunksize=0)

    def test_map_propagates_exceptions(self, ex):
        """An exception in a mapped call is raised when its result is reached."""
        results = ex.map(lambda x: 1 // x, [1, 0], chunksize=1)
        assert next(results) == 1
        with pytest.raises(ZeroDivisionError):
            next(results)


class TestMapBuffersize:
    """Python 3.14's ``map(..., buffersize=)``, on every Python forkpool supports."""

    @pytest.mark.parametrize("bad", ["2", 2.0, [2]])
    def test_a_buffersize_that_is_not_an_int_is_a_type_error(self, ex, bad):
        """A non-int buffersize is a TypeError with CPython's message, before any submit."""
        with pytest.raises(TypeError, match=r"^buffersize must be an integer or None$"):
            ex.map(_double, _never_read(), buffersize=bad)

    @pytest.mark.parametrize("bad", [0, -1])
    def test_a_buffersize_below_one_is_a_value_error(self, ex, bad):
        """buffersize 0 or below is a ValueError with CPython's message."""
        with pytest.raises(ValueError, match=r"^buffersize must be None or > 0$"):
            ex.map(_double, _never_read(), buffersize=bad)

    @pytest.mark.parametrize("chunksize", [1, 3])
    @pytest.mark.parametrize("buffersize", [1, 2, 5, 100])
    def test_results_are_those_of_map(self, ex, chunksize, buffersize):
        """Every result comes back, in order, whatever the buffer and chunk sizes."""
        results = ex.map(pow, range(11), range(11), chunksize=chunksize, buffersize=buffersize)
        assert list(results) == [pow(i, i) for i in range(11)]

    @pytest.mark.parametrize("chunksize", [1, 4])
    def test_an_endless_iterable_is_read_lazily(self, ex, chunksize):
        """An endless iterable works: it is read only as results are taken."""
        results = ex.map(_double, itertools.count(), chunksize=chunksize, buffersize=2)
        assert [next(results) for _ in range(10)] == [x * 2 for x in range(10)]
        results.close()

    @pytest.mark.parametrize(("chunksize", "buffersize"), [(1, 1), (1, 3), (2, 2), (4, 1)])
    def test_at_most_buffersize_tasks_are_ahead_of_the_results_taken(
        self, ex, chunksize, buffersize
    ):
        """buffersize tasks (chunks) are submitted at the call; each result taken adds one."""
        read: list[int] = []

        def items():
            for item in itertools.count():
                read.append(item)
                yield item

        results = ex.map(_double, items(), chunksize=chunksize, buffersize=buffersize)
        assert len(read) == buffersize * chunksize
        assert next(results) == 0
        assert len(read) == (buffersize + 1) * chunksize
        results.close()

    def test_closing_the_iterator_stops_the_buffered_tasks(self):
        """Closing the results early cancels the buffered tasks, stopping their children."""
        ex = ForkPerTaskExecutor(2, kill_grace=1)
        results = ex.map(time.sleep, itertools.chain([0], itertools.repeat(60)), buffersize=2)
        assert next(results) is None
        results.close()
        started = time.monotonic()
        ex.shutdown(wait=True)
        assert time.monotonic() - started < 10

    def test_empty_and_absent_iterables(self, ex):
        """An empty iterable, or none at all, yields nothing."""
        assert list(ex.map(str, [], buffersize=2)) == []
        assert list(ex.map(str, buffersize=2)) == []

    def test_a_timeout_counts_from_the_call(self, ex):
        """map()'s timeout applies to the whole iteration, with buffersize too."""
        results = ex.map(time.sleep, [0, 30, 30], timeout=1.0, buffersize=1)
        assert next(results) is None
        with pytest.raises(TimeoutError):
            next(results)

    def test_per_process_executor_takes_buffersize(self):
        """PerProcessExecutor.map() passes buffersize on."""
        with forkpool.PerProcessExecutor(2) as ex:
            results = ex.map(_double, itertools.count(), buffersize=3)
            assert [next(results) for _ in range(5)] == [0, 2, 4, 6, 8]
            results.close()


def _never_read():
    msg = "the iterable of a map() with bad arguments was read"
    raise AssertionError(msg)
    yield  # a generator: raises only if iterated


class TestLimits:
    def test_max_workers_is_never_exceeded_and_is_reached(self):
        """At most max_workers children run at once, and the limit is used."""
        with ForkPerTaskExecutor(max_workers=3) as ex:
            spans = [f.result(timeout=30) for f in [ex.submit(_timed_nap, 0.2) for _ in range(12)]]
        events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
        running = peak = 0
        for _, delta in events:
            running += delta
            peak = max(peak, running)
        assert peak == 3

    def test_default_max_workers_is_cpu_count(self):
        """max_workers defaults to os.cpu_count()."""
        assert ForkPerTaskExecutor().max_workers == (os.cpu_count() or 1)

    def test_is_an_executor(self):
        """The executor is a concurrent.futures.Executor."""
        assert isinstance(ForkPerTaskExecutor(), Executor)


def _timed_nap(seconds: float) -> tuple[float, float]:
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


class TestPlatform:
    def test_linux_is_supported(self):
        """This platform (Linux) has everything forkpool needs."""
        assert platform_error() is None

    @pytest.mark.parametrize(
        ("platform", "has_fork", "has_epoll", "missing"),
        [
            ("darwin", True, False, "select.epoll(), Linux's /proc"),
            ("freebsd14", True, False, "select.epoll(), Linux's /proc"),
            ("win32", False, False, "os.fork(), select.epoll(), Linux's /proc"),
        ],
    )
    def test_other_platforms_are_refused_naming_what_is_missing(
        self, platform, has_fork, has_epoll, missing
    ):
        """Elsewhere the error says Linux only, and what the platform lacks."""
        error = platform_error(platform, has_fork=has_fork, has_epoll=has_epoll)
        assert isinstance(error, forkpool.ForkPoolError)
        assert str(error).startswith(
            f"forkpool runs on Linux only: it needs {missing}, which {platform!r} does not"
        )


class TestValidation:
    @pytest.mark.parametrize("value", [0, -1])
    def test_max_workers_must_be_positive(self, value):
        """max_workers <= 0 is a ValueError."""
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            ForkPerTaskExecutor(max_workers=value)

    def test_max_workers_must_be_an_int(self):
        """A non-integer max_workers is a TypeError naming its type."""
        with pytest.raises(TypeError, match="max_workers must be an int or None, got str"):
            ForkPerTaskExecutor(max_workers="2")  # type: ignore[arg-type]

    @pytest.mark.parametrize("kwargs", [{"timeout": -1}, {"timeout": 0}, {"kill_grace": -0.5}])
    def test_negative_times(self, kwargs):
        """Negative (or zero) timeouts and negative kill_grace are ValueErrors."""
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            ForkPerTaskExecutor(**kwargs)

    def test_timeout_must_be_a_number(self):
        """A timeout that is not a number is a TypeError."""
        with pytest.raises(TypeError, match="timeout must be a number of seconds, got str"):
            ForkPerTaskExecutor(timeout="5")  # type: ignore[arg-type]

    def test_a_mold_and_a_forkserver_context_together_are_refused(self):
        """mold= and a forkserver mp_context both ask for a mold: a ValueError says so."""
        with (
            forkpool.Mold(preload=()) as mold,
            pytest.raises(ValueError, match="either mold or a forkserver"),
        ):
            ForkPerTaskExecutor(mp_context=multiprocessing.get_context("forkserver"), mold=mold)

    def test_mold_must_be_a_mold(self):
        """mold= takes a forkpool.Mold: anything else is a TypeError naming it."""
        with pytest.raises(TypeError, match=r"mold must be a forkpool\.Mold or None, got 'yes'"):
            ForkPerTaskExecutor(mold="yes")  # type: ignore[arg-type]

    def test_mp_context_given_as_a_string(self):
        """mp_context="spawn" (a string, not a context) says so and how to fix it."""
        with pytest.raises(TypeError, match=r"got 'spawn', which is not a context") as info:
            ForkPerTaskExecutor(mp_context="spawn")  # type: ignore[arg-type]
        assert "None" not in str(info.value).split("got")[1]
        assert "multiprocessing.get_context('fork')" in str(info.value)

    def test_fork_mp_context_is_accepted(self):
        """A fork context is accepted for compatibility."""
        ForkPerTaskExecutor(mp_context=multiprocessing.get_context("fork")).shutdown()

    @pytest.mark.parametrize("value", [2, 0, True])
    def test_max_tasks_per_child_must_be_none_or_one(self, value):
        """max_tasks_per_child other than None or 1 is a ValueError."""
        with pytest.raises(ValueError, match="max_tasks_per_child"):
            ForkPerTaskExecutor(max_tasks_per_child=value)

    def test_max_tasks_per_child_one_is_accepted(self):
        """max_tasks_per_child=1 is what forkpool always does."""
        with ForkPerTaskExecutor(max_tasks_per_child=1) as ex:
            assert ex.submit(_double, 2).result(timeout=10) == 4

    @pytest.mark.parametrize(
        "name", ["initializer", "parent_pre_fork", "parent_post_fork", "child_post_fork"]
    )
    def test_hooks_must_be_callable(self, name):
        """A hook that is not callable is a TypeError naming the hook."""
        with pytest.raises(TypeError, match=f"{name} must be callable or None, got int"):
            ForkPerTaskExecutor(**{name: 3})

    def test_initargs_must_be_a_tuple(self):
        """initargs must be a tuple."""
        with pytest.raises(TypeError, match="initargs must be a tuple, got list"):
            ForkPerTaskExecutor(initializer=print, initargs=[1])  # type: ignore[arg-type]

    def test_submit_needs_a_callable(self, ex):
        """submit() of a non-callable is a TypeError naming its type."""
        with pytest.raises(TypeError, match="submit\\(\\) needs a callable as fn, got int"):
            ex.submit(42)  # type: ignore[arg-type]

    def test_submit_after_shutdown(self):
        """submit() after shutdown raises RuntimeError, as the stdlib does."""
        ex = ForkPerTaskExecutor(1)
        ex.submit(_double, 1).result(timeout=10)
        ex.shutdown()
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            ex.submit(_double, 1)

    def test_shutdown_before_any_submit(self):
        """An executor that never ran anything shuts down cleanly, twice."""
        ex = ForkPerTaskExecutor(1)
        ex.shutdown()
        ex.shutdown()
        with pytest.raises(RuntimeError):
            ex.submit(_double, 1)

    def test_repr_tells_the_state(self):
        """The reprs of executor and future say what state they are in."""
        ex = ForkPerTaskExecutor(2)
        assert repr(ex) == "<ForkPerTaskExecutor max_workers=2 idle>"
        future = ex.submit(_double, 1)
        future.result(timeout=10)
        assert repr(ex) == "<ForkPerTaskExecutor max_workers=2 running>"
        assert repr(future).endswith(f" state=finished returned int pid={future.pid}>")
        failed = ex.submit(_divide, 1, 0)
        failed.exception(timeout=10)
        assert repr(failed).endswith(f" state=finished raised ZeroDivisionError pid={failed.pid}>")
        running = ex.submit(time.sleep, 30)
        assert running.cancel()
        assert repr(running).endswith(" state=cancelled>") or " state=cancelled pid=" in repr(
            running
        )
        ex.shutdown()
        assert repr(ex) == "<ForkPerTaskExecutor max_workers=2 shut down>"


def test_public_names():
    """The package exports exactly the documented API."""
    assert set(forkpool.__all__) >= {
        "ForkPerTaskExecutor",
        "ForkFuture",
        "options",
        "ForkPoolError",
        "TaskTimeoutError",
        "ChildDiedError",
        "ResultNotPicklableError",
    }
