"""forkpool.options: per-callable settings that never change the callable."""

from __future__ import annotations

import pickle

import pytest

import forkpool
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
