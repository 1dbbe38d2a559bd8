"""How a task's exception or death reaches its future."""

from __future__ import annotations

import ctypes
import faulthandler
import functools
import os
import pickle
import re
import signal
import threading
from concurrent.futures.process import BrokenProcessPool

import pytest
from helpers import run_script

from forkpool import (
    ChildDiedError,
    ForkPerTaskExecutor,
    ForkPoolError,
    RemoteTaskError,
    ResultNotPicklableError,
    TaskTimeoutError,
)
from forkpool._errors import RemoteTraceback


def _segfault() -> None:
    # pytest enables faulthandler, which the child inherits: its report of this
    # deliberate crash would only be noise in the suite's output.
    faulthandler.disable()
    ctypes.string_at(0)


@pytest.fixture(name="ex")
def fixture_ex():
    with ForkPerTaskExecutor(max_workers=2) as ex:
        yield ex


class NeedsTwoArgs(Exception):
    """Pickles fine, but unpickling calls __init__ with one argument and fails."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}+{b}")


class HoldsALock(Exception):
    """Cannot be pickled at all: it carries a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class RefusesToPickle(Exception):
    """Its own __reduce__ refuses; forkpool must rebuild it another way."""

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("never")


class Unshippable(Exception):
    """Not even the class can be sent: it is not importable and holds a lock."""

    lock = threading.Lock()


Unshippable.__module__ = "no_such_module_anywhere"


def _raise(exc: BaseException) -> None:
    raise exc


class TestExceptions:
    def test_type_and_message_survive(self, ex):
        """The task's exception is raised with its own type and message."""
        with pytest.raises(KeyError, match="missing"):
            ex.submit(_raise, KeyError("missing")).result(timeout=10)

    def test_remote_traceback_is_the_cause(self, ex):
        """The child's formatted traceback is chained as __cause__."""
        with pytest.raises(ZeroDivisionError) as info:
            ex.submit(lambda: 1 // 0).result(timeout=10)
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "ZeroDivisionError" in str(cause)
        assert "lambda" in cause.traceback_text

    @pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()])
    def test_base_exceptions_are_outcomes(self, ex, exc):
        """SystemExit and KeyboardInterrupt in a task are reported like any exception."""
        with pytest.raises(type(exc)):
            ex.submit(_raise, exc).result(timeout=10)

    @pytest.mark.fork_only  # its arguments are made not to pickle
    def test_exception_that_fails_to_unpickle(self, ex):
        """An exception that pickles but cannot unpickle arrives as its own type."""
        with pytest.raises(NeedsTwoArgs, match=r"1\+2"):
            ex.submit(_raise, NeedsTwoArgs(1, 2)).result(timeout=10)

    @pytest.mark.fork_only  # its arguments are made not to pickle
    def test_exception_that_cannot_be_pickled(self, ex):
        """An unpicklable exception still arrives with its type and message."""
        with pytest.raises(HoldsALock, match="locked out"):
            ex.submit(_raise, HoldsALock("locked out")).result(timeout=10)

    @pytest.mark.fork_only  # its arguments are made not to pickle
    def test_exception_whose_reduce_refuses(self, ex):
        """An exception whose __reduce__ raises is rebuilt as its own class."""
        with pytest.raises(RefusesToPickle, match="stubborn"):
            ex.submit(_raise, RefusesToPickle("stubborn")).result(timeout=10)

    @pytest.mark.fork_only  # its arguments are made not to pickle
    def test_exception_with_no_picklable_form(self, ex):
        """When nothing pickles, RemoteTaskError carries type name, message, traceback."""
        with pytest.raises(RemoteTaskError) as info:
            ex.submit(_raise, Unshippable("stuck here")).result(timeout=10)
        error = info.value
        assert error.type_name == "no_such_module_anywhere.Unshippable"
        assert error.message == "stuck here"
        assert "Unshippable" in error.traceback_text
        assert str(error) == "no_such_module_anywhere.Unshippable: stuck here"
        assert isinstance(error, ForkPoolError)

    def test_unpicklable_result(self, ex):
        """A result that cannot be pickled fails with an error naming its type."""
        with pytest.raises(ResultNotPicklableError, match=r"_thread\.lock"):
            ex.submit(threading.Lock).result(timeout=10)

    def test_main_module_classes_come_back_as_the_same_class(self):
        """An exception class from __main__ is caught by `except` in the parent."""
        result = run_script(
            """
            from forkpool import ForkPerTaskExecutor

            class AppError(Exception):
                pass

            def fail():
                raise AppError("from the child")

            if __name__ == "__main__":
                with ForkPerTaskExecutor(1) as ex:
                    try:
                        ex.submit(fail).result(timeout=10)
                    except AppError as exc:
                        print("caught", exc)
            """
        )
        assert result.stdout.strip() == "caught from the child", result.stderr


class TestChildDeath:
    def test_exit_code(self, ex):
        """os._exit without a result fails the future with the exit code."""
        with pytest.raises(ChildDiedError) as info:
            ex.submit(os._exit, 7).result(timeout=10)
        error = info.value
        assert (error.exitcode, error.signal) == (7, None)
        assert f"child {error.pid} exited with code 7 without sending a result" in str(error)

    def test_sigkill_names_the_oom_killer(self, ex):
        """A SIGKILLed child's error names the signal and the likely culprit."""
        with pytest.raises(ChildDiedError) as info:
            ex.submit(lambda: os.kill(os.getpid(), signal.SIGKILL)).result(timeout=10)
        error = info.value
        assert error.signal == signal.SIGKILL
        assert error.exitcode is None
        assert re.fullmatch(
            rf"child {error.pid} was killed by SIGKILL \(possibly the OOM killer\) "
            # A child killed this early can own no page yet: "0 B" is a figure too.
            r"at (?:\d+ B|\d+\.\d [KMG]iB) own peak \(\d+\.\d MiB peak RSS\)",
            str(error),
        )

    def test_segfault(self, ex):
        """A segfault fails only its own future, and names SIGSEGV."""
        with pytest.raises(ChildDiedError, match="SIGSEGV") as info:
            ex.submit(_segfault).result(timeout=10)
        assert info.value.signal == signal.SIGSEGV

    def test_executor_keeps_working_after_deaths(self, ex):
        """After children die in every way, new tasks still run."""
        deaths = [
            ex.submit(os._exit, 1),
            ex.submit(lambda: os.kill(os.getpid(), signal.SIGKILL)),
            ex.submit(_segfault),
        ]
        for future in deaths:
            with pytest.raises(ChildDiedError):
                future.result(timeout=10)
        assert ex.submit(pow, 2, 10).result(timeout=10) == 1024

    def test_is_a_broken_process_pool(self, ex):
        """Code written for ProcessPoolExecutor still catches a child's death."""
        with pytest.raises(BrokenProcessPool):
            ex.submit(os._exit, 1).result(timeout=10)

    def test_exit_zero_without_result(self, ex):
        """Even exit code 0 without a result is a death, not a success."""
        with pytest.raises(ChildDiedError, match=r"exited with code 0") as info:
            ex.submit(os._exit, 0).result(timeout=10)
        assert info.value.__cause__ is None  # as ProcessPoolExecutor: only nonzero is abrupt

    @pytest.mark.parametrize(
        ("task", "code"),
        [(functools.partial(os._exit, 99), 99), (_segfault, -signal.SIGSEGV)],
    )
    def test_the_cause_says_the_process_terminated_abruptly(self, ex, task, code):
        """As ProcessPoolExecutor on 3.15: the cause names the pid and the exit code."""
        with pytest.raises(BrokenProcessPool) as info:
            ex.submit(task).result(timeout=10)
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert cause.tb == f"Process {info.value.pid} terminated abruptly with exit code {code}"
        assert cause.tb in str(cause)


class TestErrorObjects:
    def test_errors_pickle(self):
        """forkpool's errors survive pickling with their attributes."""
        for error in (
            ChildDiedError(12, None, 9, "detail"),
            TaskTimeoutError(12, 1.5),
            RemoteTaskError("x.Y", "msg", "tb"),
        ):
            copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
            assert type(copy) is type(error)
            assert str(copy) == str(error)
            assert copy.__dict__ == error.__dict__

    def test_timeout_error_is_a_timeout_error(self):
        """TaskTimeoutError is a TimeoutError and a ForkPoolError."""
        error = TaskTimeoutError(1, 2.0)
        assert isinstance(error, TimeoutError)
        assert isinstance(error, ForkPoolError)
        assert str(error) == "task in child 1 exceeded its timeout of 2s and was stopped"
