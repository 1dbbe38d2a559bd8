"""forkpool.options: per-callable settings that never change the callable."""

from __future__ import annotations

import pickle
import time

import pytest
from helpers import wait_for, wait_gone

import forkpool
from forkpool import ForkPerTaskExecutor
from forkpool._options import UNSET, TaskOptions, options_of, unwrap


@forkpool.options(timeout=30)
def decorated(x: int) -> int:
    """Doubles x."""
    return 2 * x


class Report:
    @forkpool.options(kill_grace=1)
    def build(self, n: int) -> str:
        return f"report {n}"


class TestOptions:
    def test_wrapper_calls_through_and_keeps_metadata(self):
        """A decorated function still runs, with its name and docstring."""
        assert decorated(4) == 8
        assert decorated.__name__ == "decorated"
        assert decorated.__doc__ == "Doubles x."
        assert unwrap(decorated).__name__ == "decorated"

    def test_merging_outer_over_inner(self):
        """Wrapping again merges: the outer (call-site) settings win, the rest stay."""
        wrapped = forkpool.options(kill_grace=2)(decorated)
        assert options_of(wrapped) == TaskOptions(timeout=30, kill_grace=2)
        assert options_of(decorated) == TaskOptions(timeout=30, kill_grace=UNSET)

    def test_decorated_function_pickles_by_reference(self):
        """A decorated module-level function pickles as itself (by name)."""
        assert pickle.loads(pickle.dumps(decorated)) is decorated  # noqa: S301

    def test_call_site_wrapper_pickles_by_value(self):
        """A call-site wrapper pickles as the function plus its options."""
        copy = pickle.loads(pickle.dumps(forkpool.options(timeout=1)(decorated)))  # noqa: S301
        assert options_of(copy) == TaskOptions(timeout=1, kill_grace=UNSET)
        assert copy(3) == 6

    def test_methods_bind_self(self):
        """A decorated method binds self and keeps its options."""
        report = Report()
        assert report.build(3) == "report 3"
        assert options_of(report.build) == TaskOptions(timeout=UNSET, kill_grace=1)

    @pytest.mark.parametrize("kwargs", [{"timeout": -1}, {"kill_grace": float("nan")}])
    def test_bad_values(self, kwargs):
        """Out-of-range settings are ValueErrors at the options() call."""
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            forkpool.options(**kwargs)

    def test_non_callable(self):
        """Wrapping a non-callable is a TypeError."""
        with pytest.raises(TypeError, match="must wrap a callable, got int"):
            forkpool.options(timeout=1)(5)  # type: ignore[arg-type]


THIRTY_DAYS = 30 * 86400


def _nap(seconds: float) -> str:
    time.sleep(seconds)
    return "napped"


class TestHugeSettings:
    def test_thirty_day_timeout_and_grace(self):
        """A 30-day timeout and kill grace work: results arrive, cancel still stops a task."""
        with ForkPerTaskExecutor(2, timeout=THIRTY_DAYS, kill_grace=THIRTY_DAYS) as ex:
            assert ex.submit(pow, 2, 3).result(timeout=10) == 8
            running = ex.submit(_nap, 60)
            wait_for(lambda: running.pid is not None, 10, "the fork")
            assert running.cancel()
            wait_gone(running.pid, timeout=10)

    @pytest.mark.parametrize("timeout", [1e9, THIRTY_DAYS])
    def test_huge_per_callable_timeout(self, timeout):
        """options(timeout=...) of decades works."""
        with ForkPerTaskExecutor(1) as ex:
            napper = forkpool.options(timeout=timeout)(_nap)
            assert ex.submit(napper, 0.1).result(timeout=10) == "napped"

    def test_huge_memory_limit(self):
        """A memory limit of 4 EiB is no limit at all, and no error."""
        with ForkPerTaskExecutor(1, memory_limit=2**62) as ex:
            assert len(ex.submit(bytearray, 1 << 20).result(timeout=10)) == 1 << 20

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"timeout": 1e300},
            {"kill_grace": 1e300},
            {"reap_interval": 1e300},
            {"ttl": 1e300},
            {"memory_limit": 2**80},
        ],
        ids=lambda kwargs: next(iter(kwargs)),
    )
    def test_out_of_range_is_a_value_error_at_the_call(self, kwargs):
        """Settings past what the platform can wait for or cap are ValueErrors, named."""
        name = next(iter(kwargs))
        with pytest.raises(ValueError, match=f"{name} must be at most"):
            ForkPerTaskExecutor(**kwargs)
        if name != "reap_interval":
            with pytest.raises(ValueError, match=f"{name} must be at most"):
                forkpool.options(**kwargs)
