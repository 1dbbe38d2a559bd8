"""Progress reports, resource usage and memory caps of tasks."""

from __future__ import annotations

import errno
import mmap
import os
import re
import signal
import threading
import time
from typing import TYPE_CHECKING

import pytest
from helpers import wait_for

import forkpool
from forkpool import ChildDiedError, ForkPerTaskExecutor, ResourceUsage

if TYPE_CHECKING:
    from pathlib import Path


def _count_up(n: int, pause: float = 0.0) -> str:
    for i in range(n):
        forkpool.report_progress({"done": i + 1, "of": n})
        time.sleep(pause)
    return "finished"


def _report_then_wait(gate: str) -> str:
    forkpool.report_progress("first")
    forkpool.report_progress("second")
    while not os.path.exists(gate):  # noqa: PTH110 - polling a file the test creates
        time.sleep(0.01)
    return "released"


class TestProgress:
    def test_every_value_reaches_the_callback_in_order(self):
        """Each reported value reaches progress callbacks, in order, before the result."""
        seen: list[object] = []
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_count_up, 50)
            future.add_progress_callback(lambda f, value: seen.append(value))
            assert future.result(timeout=10) == "finished"
        assert seen[-1] == {"done": 50, "of": 50}
        dones = [value["done"] for value in seen]
        assert dones == sorted(dones)
        assert future.progress == {"done": 50, "of": 50}

    def test_late_callback_gets_the_latest_value_at_once(self, tmp_path):
        """A callback added after reports were made is called at once with the latest."""
        gate = tmp_path / "gate"
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_report_then_wait, str(gate))
            wait_for(lambda: future.progress == "second", 10, "both reports")
            seen: list[object] = []
            future.add_progress_callback(lambda f, value: seen.append((f, value)))
            assert seen == [(future, "second")]
            gate.touch()
            assert future.result(timeout=10) == "released"

    def test_progress_is_none_before_any_report(self):
        """progress is None for a task that never reports."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(pow, 2, 2)
            future.result(timeout=10)
        assert future.progress is None

    def test_reports_from_threads_stay_whole(self):
        """Reports from several threads of a task arrive intact, none lost."""

        def chatty() -> int:
            def report(thread: int) -> None:
                for i in range(200):
                    forkpool.report_progress((thread, i, "x" * 1000))

            threads = [threading.Thread(target=report, args=(t,)) for t in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return 800

        seen: list[tuple[int, int, str]] = []
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(chatty)
            future.add_progress_callback(lambda f, value: seen.append(value))
            assert future.result(timeout=20) == 800
        assert len(seen) == 800
        assert {(t, i) for t, i, _ in seen} == {(t, i) for t in range(4) for i in range(200)}

    def test_failing_callback_is_logged_not_fatal(self, caplog):
        """A progress callback that raises is logged; the task and others go on."""
        seen: list[object] = []
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_count_up, 5, 0.01)
            future.add_progress_callback(lambda f, value: 1 // 0)
            future.add_progress_callback(lambda f, value: seen.append(value))
            assert future.result(timeout=10) == "finished"
        assert len(seen) >= 1
        assert "progress callback" in caplog.text

    def test_unpicklable_progress_fails_the_task(self):
        """A progress value that cannot be pickled raises in the task, naming its type."""
        with (
            ForkPerTaskExecutor(1) as ex,
            pytest.raises(forkpool.ResultNotPicklableError, match="progress value of type lock"),
        ):
            ex.submit(lambda: forkpool.report_progress(threading.Lock())).result(timeout=10)

    def test_outside_a_child_it_warns(self):
        """report_progress() outside a forkpool child does nothing but warn."""
        with pytest.warns(RuntimeWarning, match="outside a forkpool task"):
            forkpool.report_progress(1)


class TestResourceUsage:
    def test_usage_after_reaping(self):
        """A reaped task's future carries its peak RSS and CPU and wall times."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(lambda: len(bytearray(64 << 20)) and sum(range(3_000_000)))
            future.result(timeout=20)
        usage = future.rusage
        assert isinstance(usage, ResourceUsage)
        assert usage.max_rss_bytes >= 64 << 20
        assert usage.user_time > 0
        assert usage.wall_time >= usage.user_time * 0.5
        assert "MiB peak RSS" in str(usage)

    def test_usage_is_none_before_the_end(self):
        """rusage is None while the task runs."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(time.sleep, 0.5)
            wait_for(lambda: future.pid is not None, 10, "the fork")
            assert future.rusage is None
            future.result(timeout=10)
        assert future.rusage is not None

    def test_died_error_carries_own_and_total_peak(self):
        """ChildDiedError carries rusage and names the task's own peak and the peak RSS."""

        def bloat_then_die() -> None:
            blob = bytearray(96 << 20)
            blob[::4096] = b"x" * len(blob[::4096])
            os.kill(os.getpid(), signal.SIGKILL)

        with ForkPerTaskExecutor(1) as ex, pytest.raises(ChildDiedError) as info:
            ex.submit(bloat_then_die).result(timeout=10)
        error = info.value
        assert error.rusage is not None
        assert error.rusage.max_rss_bytes >= 96 << 20
        own = error.rusage.own_peak_bytes
        assert own is not None
        # Measured from right after the fork here (the child never reported): +-10 %.
        assert own == pytest.approx(96 << 20, rel=0.1)
        assert re.search(r"at \d+\.\d MiB own peak \(\d+\.\d MiB peak RSS\)", str(error))

    def test_own_peak_is_what_the_task_added_not_what_it_inherited(self, request):
        """A parent holding 1 GiB; a task adding 50 MiB: own peak 50 MiB +-10 %, peak RSS 1 GiB+."""
        inherited = bytearray(b"\x01") * (1 << 30)  # every page written: resident
        try:
            with ForkPerTaskExecutor(1) as ex:
                future = ex.submit(_hold_for_a_moment, 50 << 20)
                assert future.result(timeout=60) == 50 << 20
        finally:
            del inherited
        usage = future.rusage
        assert usage is not None
        assert usage.own_peak_bytes is not None
        assert usage.own_peak_bytes == pytest.approx(50 << 20, rel=0.1)
        if not request.config.getoption("--mold"):  # a mold's child inherits the mold's
            assert usage.max_rss_bytes >= 1 << 30
        assert f"{usage.own_peak_bytes / (1 << 20):.1f} MiB own peak" in str(usage)

    def test_own_peak_counts_memory_freed_before_the_end(self):
        """Memory the task allocated and freed before returning still counts: it is a peak."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_allocate_then_free, 80 << 20)
            future.result(timeout=20)
        own = future.rusage.own_peak_bytes  # type: ignore[union-attr]
        assert own is not None
        # The kernel's resident counts are kept per CPU and summed lazily: +-10 %.
        assert own == pytest.approx(80 << 20, rel=0.1)

    def test_usage_is_logged_at_debug(self, caplog):
        """Every reaped task's usage is logged at DEBUG."""
        caplog.set_level("DEBUG", logger="forkpool")
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(pow, 2, 2)
            future.result(timeout=10)
        assert f"child {future.pid} ended" in caplog.text
        assert "peak RSS" in caplog.text


def _hold_for_a_moment(size: int) -> int:
    block = bytearray(b"\x02") * size
    return len(block)


def _allocate_then_free(size: int) -> None:
    block = bytearray(b"\x03") * size
    del block


def _map_file(path: Path, access: int, length: int = 0) -> int:
    with path.open("r+b") as file, mmap.mmap(file.fileno(), length, access=access) as mapped:
        checksum = sum(mapped[offset] for offset in range(0, len(mapped), 1 << 20))
        assert checksum == 0
        return len(mapped)


def _fill_shared_memory(size: int) -> int:
    with mmap.mmap(-1, size) as shared:  # anonymous and shared: mmap's default
        for offset in range(0, size, mmap.PAGESIZE):
            shared[offset] = 1
        return len(shared)


class TestMemoryLimit:
    def test_runaway_task_gets_memory_error(self):
        """A task allocating past memory_limit gets MemoryError; the executor goes on."""
        with ForkPerTaskExecutor(1, memory_limit=128 << 20) as ex:
            with pytest.raises(MemoryError):
                ex.submit(lambda: bytearray(512 << 20)).result(timeout=20)
            with pytest.raises(MemoryError):
                ex.submit(lambda: [str(i) for i in range(20_000_000)]).result(timeout=60)
            assert ex.submit(lambda: len(bytearray(64 << 20))).result(timeout=20) == 64 << 20

    def test_budget_is_on_top_of_what_the_parent_holds(self):
        """A large parent does not eat the task's budget: the cap is what the task adds."""
        ballast = bytearray(256 << 20)
        with ForkPerTaskExecutor(1, memory_limit=64 << 20) as ex:
            assert ex.submit(lambda: len(bytearray(32 << 20))).result(timeout=20) == 32 << 20
        del ballast

    def test_read_only_and_shared_file_mappings_do_not_count(self, tmp_path):
        """Mapping a 200 MiB file to read it, or shared, works under a 64 MiB limit."""
        path = tmp_path / "big"
        with path.open("wb") as big:
            big.truncate(200 << 20)
        with ForkPerTaskExecutor(1, memory_limit=64 << 20) as ex:
            for access in (mmap.ACCESS_READ, mmap.ACCESS_WRITE):
                assert ex.submit(_map_file, path, access).result(timeout=20) == 200 << 20

    def test_a_copy_on_write_file_mapping_counts_its_whole_size(self, tmp_path):
        """As documented: a private writable mapping of a 200 MiB file fails (ENOMEM)."""
        path = tmp_path / "big"
        with path.open("wb") as big:
            big.truncate(200 << 20)
        with ForkPerTaskExecutor(1, memory_limit=64 << 20) as ex:
            with pytest.raises(OSError, match="Cannot allocate memory") as info:
                ex.submit(_map_file, path, mmap.ACCESS_COPY).result(timeout=20)
            assert info.value.errno == errno.ENOMEM
            # Under the limit, the same mapping works.
            assert ex.submit(_map_file, path, mmap.ACCESS_COPY, 32 << 20).result(timeout=20) == (
                32 << 20
            )

    def test_shared_memory_is_not_counted(self):
        """As documented: 150 MiB written to shared anonymous memory is not stopped at 64."""
        with ForkPerTaskExecutor(1, memory_limit=64 << 20) as ex:
            assert ex.submit(_fill_shared_memory, 150 << 20).result(timeout=30) == 150 << 20
            with pytest.raises(MemoryError):
                ex.submit(bytearray, 150 << 20).result(timeout=20)  # private: stopped

    def test_per_callable_memory_limit(self):
        """options(memory_limit=...) caps one callable; None lifts the executor's cap."""
        capped = forkpool.options(memory_limit=32 << 20)(bytearray)
        free = forkpool.options(memory_limit=None)(bytearray)
        with ForkPerTaskExecutor(1, memory_limit=16 << 20) as ex:
            with pytest.raises(MemoryError):
                ex.submit(capped, 64 << 20).result(timeout=20)
            assert len(ex.submit(free, 64 << 20).result(timeout=20)) == 64 << 20

    @pytest.mark.parametrize(("value", "error"), [(0, ValueError), (1.5, TypeError)])
    def test_invalid_limits(self, value, error):
        """memory_limit must be a positive int or None."""
        with pytest.raises(error, match="memory_limit"):
            ForkPerTaskExecutor(memory_limit=value)
