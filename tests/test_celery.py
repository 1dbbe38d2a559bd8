"""forkpool.celery against real Celery workers, on a real Redis (and RabbitMQ) broker.

Each worker is a ``celery worker`` subprocess running tests/celery_app.py; tests
send it tasks by name and look at what the tasks reported, at the result backend,
and at the processes in /proc.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
import redis
from celery import Celery
from celery.exceptions import TaskRevokedError, TimeLimitExceeded, WorkerLostError
from celery_worker import CeleryWorker
from helpers import (
    OwnServer,
    dies_with_us,
    free_port,
    is_running,
    rabbitmq_runs,
    wait_for,
    wait_gone,
)

from forkpool.celery import ForkPool
from forkpool.celery._settings import executor_kwargs, tracking_redis

pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(120)]

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture(name="server", scope="module")
def fixture_server():
    """A Valkey server: broker, result backend and forkpool's tracking, all three."""
    server = OwnServer()
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(name="worker", scope="module")
def fixture_worker(server, tmp_path_factory):
    """One ForkPool worker (two children at a time) shared by the tests that leave it be."""
    worker = CeleryWorker(
        tmp_path_factory.mktemp("celery"),
        broker=server,
        backend=server,
        tracking=server,
        concurrency=2,
    )
    with worker:
        yield worker


@pytest.fixture(name="client", scope="module")
def fixture_client(worker):
    app = worker.client()
    yield app
    app.close()


def _name() -> str:
    return uuid.uuid4().hex[:8]


def _tracked(url: str, worker: CeleryWorker, host: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.zcard(f"{worker.prefix}:{{{host}}}:active"))
    finally:
        client.close()


class TestForkPool:
    def test_each_task_runs_in_a_fresh_child_of_the_workers_mold(self, worker, client):
        """Each task gets its own child of the worker's mold; worker_process_init runs in it."""
        results = [client.send_task("celery_app.whoami").get(timeout=30) for _ in range(3)]
        pids = {result["pid"] for result in results}
        assert len(pids) == 3
        assert worker.forking_pid != worker.pid
        assert {result["ppid"] for result in results} == {worker.forking_pid}
        for pid in pids:
            assert worker.has_report(f"init-{pid}")
            wait_gone(pid)

    def test_memory_stays_flat_after_20_heavy_tasks(self, worker, client):
        """20 tasks that each keep 50 MiB leave the worker's tree within 10 MiB of its size."""
        client.send_task("celery_app.noop").get(timeout=30)
        before = worker.tree_rss_mib()
        results = [client.send_task("celery_app.heavy", args=(50,)) for _ in range(20)]
        # Each child starts from the worker's state: what a task keeps dies with it.
        assert [result.get(timeout=60) for result in results] == [1] * 20
        # A child stores its result, then exits: measure once the last is gone.
        wait_for(lambda: not worker.task_processes(), 10, "the last children to exit")
        grown = worker.tree_rss_mib() - before
        print(f"\nworker tree: {before:.1f} MiB, then {grown:+.1f} MiB after 20 x 50 MiB")
        assert grown <= 10, grown

    def test_hard_time_limit_fails_the_task_and_stops_its_processes(self, worker, client):
        """At the hard limit the child's group is stopped; the task fails with TimeLimitExceeded."""
        name = _name()
        started = time.monotonic()
        result = client.send_task("celery_app.runs_past_hard_limit", args=(name,))
        with pytest.raises(TimeLimitExceeded):
            result.get(timeout=30)
        elapsed = time.monotonic() - started
        assert result.state == "FAILURE"
        facts = worker.report(f"{name}-started")
        wait_gone(facts["pid"], 5)
        wait_gone(facts["grandchild"], 5)
        assert elapsed < 5, elapsed
        line = f"Hard time limit (1s) exceeded for celery_app.runs_past_hard_limit[{result.id}]"
        # Celery's timeout handler logs it just after the failure is stored, as with billiard.
        wait_for(lambda: line in worker.log_text(), 10, "the hard limit's log line")

    def test_soft_time_limit_is_raised_inside_the_task(self, worker, client):
        """At the soft limit SoftTimeLimitExceeded is raised in the task, which may clean up."""
        name = _name()
        started = time.monotonic()
        result = client.send_task("celery_app.cleans_up_at_soft_limit", args=(name,))
        assert result.get(timeout=30) == "cleaned up"
        elapsed = time.monotonic() - started
        assert result.state == "SUCCESS"
        assert worker.report(f"{name}-soft")["pid"] == worker.report(f"{name}-started")["pid"]
        assert 1 <= elapsed < 5, elapsed
        assert "Soft time limit (1s) exceeded for celery_app.cleans_up_at_soft_limit" in (
            worker.log_text()
        )

    def test_revoke_terminate_stops_that_tasks_child(self, worker, client):
        """revoke(terminate=True) sends SIGTERM to the task's child; the task is revoked."""
        name = _name()
        result = client.send_task("celery_app.sleeper", args=(name, 30))
        child = worker.report(f"{name}-started")["pid"]
        result.revoke(terminate=True)
        wait_gone(child, 10)
        with pytest.raises(TaskRevokedError):
            result.get(timeout=30)
        assert result.state == "REVOKED"
        assert not worker.has_report(f"{name}-finished")

    def test_revoke_terminate_sends_the_signal_asked_for(self, worker, client):
        """revoke(terminate=True, signal="SIGUSR1") raises SoftTimeLimitExceeded in the task."""
        name = _name()
        result = client.send_task("celery_app.handles_usr1", args=(name,))
        child = worker.report(f"{name}-started")["pid"]
        result.revoke(terminate=True, signal="SIGUSR1")
        assert worker.report(f"{name}-usr1", 10)["pid"] == child
        wait_gone(child, 10)

    def test_a_crash_fails_one_task_with_worker_lost(self, worker, client):
        """A child killed outright fails its task with WorkerLostError; the pool goes on."""
        result = client.send_task("celery_app.crashes")
        with pytest.raises(WorkerLostError, match="SIGKILL"):
            result.get(timeout=30)
        assert client.send_task("celery_app.whoami").get(timeout=30)["ppid"] == worker.forking_pid

    def test_a_forked_task_runs_in_place_in_a_pool_child(self, worker, client):
        """A ForkedTask under ForkPool runs in the task's child, not in a fork of it."""
        result = client.send_task("celery_app.forked_heavy", args=(1,)).get(timeout=30)
        assert result["ppid"] == worker.forking_pid
        assert result["retained"] == 1

    def test_info_names_the_pool_and_its_tracking(self, worker, client):
        """`celery inspect stats` shows the pool, its concurrency and where it tracks children."""
        stats = client.control.inspect(destination=[_node(worker)], timeout=10).stats()
        pool = stats[_node(worker)]["pool"]
        assert pool["implementation"] == "forkpool.celery:ForkPool"
        assert pool["max-concurrency"] == 2
        assert pool["tracking"] == {"key_prefix": worker.prefix, "host": _node(worker)}


def _node(worker: CeleryWorker) -> str:
    return worker.node.replace("%h", socket.gethostname())


_EMBEDDED_WORKER = """
import sys

from celery import Celery
from celery.contrib.testing.worker import start_worker

broker, pool = sys.argv[1], sys.argv[2]
other = Celery("other-default", broker=broker, backend=broker)
app = Celery("worker-app", broker=broker, backend=broker)
app.conf.update(forkpool_redis=False, broker_connection_retry_on_startup=True)


@app.task(name="only_on_the_worker_app")
def only_on_the_worker_app(n):
    from celery import current_app

    return [n * 2, current_app.main]


with start_worker(app, pool=pool, concurrency=1, perform_ping_check=False, loglevel="WARNING"):
    # start_worker made the worker's app the default; the pytest plugin's per-test
    # app (setup_default_app), or any code of the process, may make another one so.
    other.set_default()
    print("RESULT", only_on_the_worker_app.delay(21).get(timeout=20), flush=True)
"""


class TestHostContract:
    """What every pool Celery ships keeps, shown for ForkPool beside prefork."""

    @pytest.mark.parametrize("pool", ["forkpool.celery:ForkPool", "prefork"])
    def test_an_embedded_workers_tasks_run_in_its_own_app(self, server, tmp_path, pool):
        """start_worker(app B) in a process whose default app is A: B's task runs, in B."""
        script = tmp_path / "embedded_worker.py"
        script.write_text(_EMBEDDED_WORKER)
        completed = subprocess.run(
            dies_with_us([sys.executable, str(script), server, pool]),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            start_new_session=True,
        )
        assert "RESULT [42, 'worker-app']" in completed.stdout, completed.stderr[-4000:]
        assert completed.returncode == 0, completed.stderr[-4000:]

    @pytest.mark.parametrize("pool", ["forkpool", "prefork"])
    def test_revoked_and_expired_tasks_waiting_for_a_slot_never_run(self, server, tmp_path, pool):
        """-c 1, prefetched behind busy tasks: one revoked by id, one past expires: REVOKED."""
        worker = CeleryWorker(
            tmp_path,
            broker=server,
            backend=server,
            pool=pool,
            concurrency=1,
            extra_args=("--prefetch-multiplier", "8"),
        )
        with worker:
            client = worker.client()
            busy = [client.send_task("celery_app.sleeper", args=(_name(), 1.0)) for _ in range(3)]
            expiring = client.send_task("celery_app.sleeper", args=(_name(), 0.1), expires=1)
            revoked = client.send_task("celery_app.sleeper", args=(_name(), 0.1))
            # Both are received (prefetched) at once: they wait in the worker for a slot.
            wait_for(lambda: _reserved(client, revoked.id), 20, "the worker to reserve the task")
            client.control.revoke(revoked.id)
            assert [result.get(timeout=30) for result in busy] == ["slept 1.0"] * 3
            for result in (expiring, revoked):
                with pytest.raises(TaskRevokedError):
                    result.get(timeout=30)
                assert result.state == "REVOKED"


class TestMold:
    """ForkPool forks tasks from a mold holding the worker's app, unless told otherwise."""

    @pytest.mark.parametrize("fork_from", ["mold", "worker"])
    def test_an_application_thread_of_the_worker_cannot_deadlock_tasks(
        self, server, tmp_path, fork_from
    ):
        """A worker thread reading app.backend.client all along: 60 of 60 tasks succeed."""
        worker = CeleryWorker(
            tmp_path,
            broker=server,
            backend=server,
            concurrency=2,
            extra_args=("--time-limit", "5"),
            env={"FORKPOOL_TEST_APP_THREAD": "1"},
            fork_from=fork_from,
        )
        with worker:
            client = worker.client()
            results = [client.send_task("celery_app.whoami") for _ in range(60)]
            outcomes = [result.get(timeout=60)["ppid"] for result in results]
            forking_pid = worker.forking_pid
        # From the worker itself, each child's copies of kombu's locks were made new.
        assert (forking_pid == worker.pid) == (fork_from == "worker")
        assert outcomes == [forking_pid] * 60

    def test_fork_from_worker_forks_the_worker_process(self, server, tmp_path):
        """forkpool_fork_from = "worker": each task is a child of the worker itself."""
        worker = CeleryWorker(tmp_path, broker=server, backend=server, fork_from="worker")
        with worker:
            result = worker.client().send_task("celery_app.whoami").get(timeout=30)
            assert worker.forking_pid == worker.pid
        assert result["ppid"] == worker.pid


class TestMetrics:
    def test_one_setting_serves_the_pools_metrics(self, server, tmp_path):
        """forkpool_metrics_port: the worker serves task counts labelled by its node name."""
        port = free_port()
        worker = CeleryWorker(
            tmp_path,
            broker=server,
            backend=server,
            env={"FORKPOOL_TEST_METRICS_PORT": str(port)},
        )
        with worker:
            client = worker.client()
            for _ in range(3):
                client.send_task("celery_app.noop").get(timeout=30)
            with pytest.raises(WorkerLostError):
                client.send_task("celery_app.crashes").get(timeout=30)
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("forkpool_tasks_total{"):
                labels, value = line.rsplit(" ", 1)
                assert 'executor="fptest-' in labels
                outcome = labels.split('outcome="')[1].split('"')[0]
                counts[outcome] = counts.get(outcome, 0) + float(value)
        assert counts == {"succeeded": 3.0, "crashed": 1.0}
        assert "forkpool_children{" in text


def _reserved(client: Celery, task_id: str) -> bool:
    """The task is among those the worker holds but has not started."""
    replies = client.control.inspect(timeout=1).reserved() or {}
    return any(request["id"] == task_id for requests in replies.values() for request in requests)


class TestInProcess:
    """ForkPool and the settings driven directly, as a worker would, without one."""

    @pytest.fixture(name="app")
    def fixture_app(self):
        app = Celery("fptest-inprocess", broker="amqp://guest:guest@127.0.0.1:5672//")
        app.conf.forkpool_kill_grace = 1.0
        yield app
        app.close()

    def test_the_pool_reports_the_childs_pid_then_its_result(self, app):
        """accept_callback gets the child's pid before callback gets the task's value."""
        events: queue.Queue[tuple[str, object]] = queue.Queue()
        pool = ForkPool(limit=1, app=app)
        pool.on_start()
        try:
            pool.apply_async(
                os.getpid,
                accept_callback=lambda pid, _at: events.put(("accepted", pid)),
                callback=lambda value: events.put(("result", value)),
            )
            accepted, result = events.get(timeout=10), events.get(timeout=10)
        finally:
            pool.on_stop()
        assert accepted[0] == "accepted"
        assert result == ("result", accepted[1])
        assert accepted[1] != os.getpid()

    def test_children_inherit_the_result_backend(self, app):
        """A child finds Celery's result backend made: no task pays for building one."""
        app.conf.result_backend = "redis://127.0.0.1:6379/15"  # made, never connected here
        outcomes: queue.Queue[object] = queue.Queue()
        pool = ForkPool(limit=1, app=app)
        pool.on_start()
        try:
            for _ in range(2):
                pool.apply_async(lambda: app._backend is not None, callback=outcomes.put)
            made = [outcomes.get(timeout=10), outcomes.get(timeout=10)]
        finally:
            pool.on_stop()
        assert made == [True, True]

    def test_a_task_handed_over_after_close_is_left_unacked(self, app):
        """After close(), apply_async neither forks nor fails: no callback, no error."""
        called: list[object] = []
        pool = ForkPool(limit=1, app=app)
        pool.on_start()
        pool.close()
        try:
            late = pool.apply_async(os.getpid, callback=called.append, error_callback=called.append)
        finally:
            pool.on_stop()
        assert late._job.future.cancelled()
        assert late.worker_pids() == []
        assert called == []

    def test_a_bad_setting_is_named_when_the_pool_starts(self, app):
        """A setting the executor refuses fails on_start() with the setting's name."""
        app.conf.forkpool_kill_grace = "soon"
        with pytest.raises(TypeError, match="Celery setting forkpool_kill_grace: kill_grace"):
            ForkPool(limit=1, app=app).on_start()

    def test_children_are_tracked_where_the_settings_say(self, app, monkeypatch):
        """forkpool_redis, else FORKPOOL_REDIS_URL, else a Redis broker, else no tracking."""
        monkeypatch.delenv("FORKPOOL_REDIS_URL", raising=False)
        monkeypatch.delenv("FORKPOOL_HOST", raising=False)
        assert tracking_redis(app) is False  # an AMQP broker
        app.conf.broker_url = "redis://127.0.0.1:6379/3"
        assert tracking_redis(app) == "redis://127.0.0.1:6379/3"
        monkeypatch.setenv("FORKPOOL_REDIS_URL", "redis://127.0.0.1:6379/4")
        assert tracking_redis(app) == "redis://127.0.0.1:6379/4"
        app.conf.forkpool_redis = "redis://127.0.0.1:6379/5"
        kwargs = executor_kwargs(app, node_name="celery@box")
        assert kwargs["redis"] == "redis://127.0.0.1:6379/5"
        assert kwargs["host"] == "celery@box"
        assert kwargs["close_fds"] is True


class TestShutdown:
    def test_warm_shutdown_finishes_running_tasks(self, server, tmp_path):
        """SIGTERM: the running task finishes; one not yet forked goes to the next worker."""
        name = _name()
        first = CeleryWorker(tmp_path, broker=server, backend=server, tracking=server)
        with first:
            client = first.client()
            _warm_shutdown_hands_on_what_was_not_forked(first, client, name, tmp_path)

    def test_cold_shutdown_stops_the_children(self, server, tmp_path):
        """SIGQUIT: every child and the processes it started are stopped, and the worker exits."""
        name = _name()
        worker = CeleryWorker(tmp_path, broker=server, backend=server, tracking=server)
        with worker:
            client = worker.client()
            client.send_task("celery_app.holds_a_grandchild", args=(name,))
            facts = worker.report(f"{name}-started")
            started = time.monotonic()
            worker.signal(signal.SIGQUIT)
            worker.wait(30)
            print(f"\ncold shutdown took {time.monotonic() - started:.2f}s")
            wait_gone(facts["pid"], 5)
            wait_gone(facts["grandchild"], 5)

    def test_cold_shutdown_forks_nothing_after_the_signal(self, server, tmp_path):
        """SIGQUIT with tasks handed to the pool but not forked: none is, and it ends in 8 s."""
        name = _name()
        worker = CeleryWorker(tmp_path, broker=server, backend=server, tracking=server)
        with worker:
            client = worker.client()
            client.send_task("celery_app.sleeper", args=(f"{name}-running", 60))
            running = worker.report(f"{name}-running-started")
            waiting = [
                client.send_task("celery_app.sleeper", args=(f"{name}-waiting-{n}", 0.1))
                for n in range(3)
            ]
            # Received means handed to the pool (which holds no request back); the
            # app's prefetch of one lets one of them through, to wait there for the
            # one slot.
            wait_for(
                lambda: any(f"[{task.id}] received" in worker.log_text() for task in waiting),
                10,
                "a waiting task to reach the pool",
            )
            started = time.monotonic()
            worker.signal(signal.SIGQUIT)
            worker.wait(8)
            took = time.monotonic() - started
            wait_gone(running["pid"], 5)
        forked = sorted(path.name for path in worker.reports.glob(f"{name}-waiting-*"))
        assert forked == [], f"forked after SIGQUIT: {forked}"
        assert took < 8

    @pytest.mark.parametrize("fork_from", ["worker", "mold"])
    def test_after_sigkill_of_the_worker_its_leftovers_are_stopped(
        self, server, tmp_path, fork_from
    ):
        """A SIGKILLed worker's child dies with it; the next worker stops what the child started.

        With a mold, the mold is SIGKILLed first: left alone, it would stop the
        child's process group itself when the worker dies.
        """
        name = _name()
        first = CeleryWorker(
            tmp_path, broker=server, backend=server, tracking=server, fork_from=fork_from
        )
        host = _node(first)
        with first:
            client = first.client()
            client.send_task("celery_app.holds_a_grandchild", args=(name,))
            facts = first.report(f"{name}-started")
            # Tracking is written behind the task, never before it: let it land.
            wait_for(lambda: _tracked(server, first, host) == 1, 10, "the child's entry")
            if fork_from == "mold":
                os.kill(first.forking_pid, signal.SIGKILL)
            first.signal(signal.SIGKILL)
            first.wait(10)
            wait_gone(facts["pid"], 5)  # the parent-death signal
            # Out of reach of that signal, and of its dead owner: forkpool's to stop.
            assert is_running(facts["grandchild"])
            assert _tracked(server, first, host) == 1
            second = CeleryWorker(
                tmp_path,
                broker=server,
                backend=server,
                tracking=server,
                node=first.node,
                prefix=first.prefix,
                queue=first.queue,
                fork_from=fork_from,
            )
            with second:
                wait_gone(facts["grandchild"], 20)
                wait_for(lambda: _tracked(server, first, host) == 0, 20, "the entry's removal")


@pytest.mark.skipif(
    not rabbitmq_runs() and not os.environ.get("CI"), reason="no RabbitMQ on 127.0.0.1:5672"
)
def test_on_rabbitmq_tasks_revokes_and_warm_shutdown_work(server, tmp_path):
    """On RabbitMQ: results, revoke(terminate=True), warm shutdown's redelivery, cold shutdown."""
    name = _name()
    first = CeleryWorker(tmp_path, broker=RABBITMQ, backend=server, tracking=server)
    with first:
        client = first.client()
        assert client.send_task("celery_app.whoami").get(timeout=30)["ppid"] == first.forking_pid
        revoked = client.send_task("celery_app.sleeper", args=(f"{name}-r", 30))
        child = first.report(f"{name}-r-started")["pid"]
        revoked.revoke(terminate=True)
        wait_gone(child, 10)
        with pytest.raises(TaskRevokedError):
            revoked.get(timeout=30)
        _warm_shutdown_hands_on_what_was_not_forked(first, client, name, tmp_path)
    # A cold shutdown stops the pool from Celery's signal handler; the event loop
    # must then wake at once, not at its next timer (up to 10 s away).
    third = CeleryWorker(tmp_path, broker=RABBITMQ, backend=server, tracking=server)
    with third:
        third.client().send_task("celery_app.sleeper", args=(f"{name}-c", 60))
        child = third.report(f"{name}-c-started")["pid"]
        third.signal(signal.SIGQUIT)
        third.wait(6)
        wait_gone(child, 5)


def _warm_shutdown_hands_on_what_was_not_forked(first, client, name, tmp_path):
    """SIGTERM ``first`` with one task running and one prefetched; a second worker gets it."""
    running = client.send_task("celery_app.sleeper", args=(f"{name}-a", 2))
    first.report(f"{name}-a-started")
    queued = client.send_task("celery_app.sleeper", args=(f"{name}-b", 0.1))
    wait_for(lambda: f"[{queued.id}] received" in first.log_text(), 10, "the prefetch")
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0
    assert running.get(timeout=10) == "slept 2"
    assert not first.has_report(f"{name}-b-started")
    second = CeleryWorker(
        tmp_path,
        broker=first.env["FORKPOOL_TEST_BROKER"],
        backend=first.env["FORKPOOL_TEST_BACKEND"],
        tracking=first.env["FORKPOOL_TEST_TRACKING"],
        queue=first.queue,
    )
    with second:
        assert queued.get(timeout=60) == "slept 0.1"


class TestForkedTask:
    def test_under_threads_the_body_is_forked_from_a_mold(self, server, tmp_path):
        """Threads pool: the body runs in a mold's child, under its own request."""
        worker = CeleryWorker(tmp_path, broker=server, backend=server, pool="threads")
        with worker:
            result = worker.client().send_task("celery_app.forked_request", args=(7,))
            facts = result.get(timeout=60)
            mold = worker.forking_pid
        assert mold != worker.pid
        assert facts["ppid"] == mold
        assert (facts["id"], facts["n"]) == (result.id, 7)

    def test_under_prefork_the_pool_process_keeps_no_memory(self, server, tmp_path):
        """A ForkedTask's body runs in a fork of the prefork process, which stays its size."""
        worker = CeleryWorker(tmp_path, broker=server, backend=server, pool="prefork")
        with worker:
            client = worker.client()
            warm = client.send_task("celery_app.forked_heavy", args=(1,)).get(timeout=30)
            before = worker.tree_rss_mib()
            results = [
                client.send_task("celery_app.forked_heavy", args=(50,)).get(timeout=30)
                for _ in range(10)
            ]
            grown = worker.tree_rss_mib() - before
        assert {result["ppid"] for result in results} == {warm["ppid"]}  # one pool process
        assert len({result["pid"] for result in results}) == 10  # a fork each
        assert [result["retained"] for result in results] == [1] * 10
        print(f"\nprefork tree: {before:.1f} MiB, then {grown:+.1f} MiB after 10 x 50 MiB")
        assert grown <= 10, grown

    @pytest.mark.parametrize("pool", ["prefork", "threads"])
    def test_time_limits_reach_the_body(self, server, tmp_path, pool):
        """The soft limit is raised in the forked body; the hard one stops the body's processes."""
        name = _name()
        worker = CeleryWorker(tmp_path, broker=server, backend=server, pool=pool)
        with worker:
            client = worker.client()
            pool_process = client.send_task("celery_app.forked_heavy", args=(1,)).get(timeout=30)
            soft = client.send_task("celery_app.forked_cleans_up", args=(f"{name}-s",))
            assert soft.get(timeout=30) == "cleaned up"
            assert (
                worker.report(f"{name}-s-soft")["pid"] == worker.report(f"{name}-s-started")["pid"]
            )
            hard = client.send_task("celery_app.forked_past_hard_limit", args=(f"{name}-h",))
            with pytest.raises(TimeLimitExceeded):
                hard.get(timeout=30)
            facts = worker.report(f"{name}-h-started")
            wait_gone(facts["pid"], 5)
            wait_gone(facts["grandchild"], 5)
            # The pool process lived on: prefork did not have to kill it.
            after = client.send_task("celery_app.forked_heavy", args=(1,)).get(timeout=30)
            assert after["ppid"] == pool_process["ppid"]
