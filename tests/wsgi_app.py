"""A WSGI app for tests/test_hosts.py, run by a real gunicorn with --preload.

The executor is defined at module level, so it is made in the master, before the
workers fork: each worker must get its own.
"""

from __future__ import annotations

import os

import forkpool

EXECUTOR = forkpool.PerProcessExecutor(1, close_fds=True)


def pids() -> tuple[int, int]:
    return os.getpid(), os.getppid()


def app(environ, start_response):
    child, parent = EXECUTOR.submit(pids).result(timeout=20)
    body = f"{os.getpid()} {child} {parent}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
