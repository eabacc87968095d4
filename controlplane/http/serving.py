"""Serving the control plane under gunicorn: its command line, and the worker class it runs.

The worker is gunicorn's gevent worker: every connection is a greenlet, so a live event
stream, a long poll or a slow client costs a few kilobytes, not one of a fixed number of
threads (psycopg 3 and redis-py cooperate with gevent's patched sockets). That is what lets
one process hold thousands of open event streams while polls and session creation stay fast,
and what keeps a few hundred idle or trickling connections from starving everyone else: a
request's headers must arrive within `--keep-alive` seconds, and a client that sends or takes
nothing for CLIENT_IDLE_SECONDS is dropped.

gunicorn answers some requests itself, before Flask sees them: a bad request line, headers over
8 KB or too many of them, a URL over 4 KB, an invalid Content-Length. It writes those answers as
HTML pages; this worker writes them as the API's JSON errors, `{"error": "..."}`, like every
other answer of the platform.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import sys
from typing import Sequence

from gunicorn import util
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

from controlplane.config import Config

APP = "controlplane.app:create_app()"
# A client that neither sends nor reads a byte for this long is dropped (a request body that
# stops arriving, a stream nobody reads); HELIX_CLIENT_IDLE_SECONDS. An idle event stream
# writes every second.
CLIENT_IDLE_SECONDS = 30
# Time for a request's line and headers to arrive, and for an idle kept-alive connection.
HEADER_SECONDS = 5
# On SIGTERM a worker finishes what it is answering for at most this long, then closes the rest
# (live event streams would otherwise hold it for gunicorn's default 30 s; their clients reconnect).
GRACEFUL_SECONDS = 10
# Connections a worker takes besides its live event streams (polls, uploads, the web app): a
# process with every stream slot taken still answers them.
CONNECTIONS_BESIDE_STREAMS = 1000
# gunicorn's default access line holds the query string, and a browser's events stream carries
# its API key there (?access_token=): log the path alone.
ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'


def gunicorn_command(port: int, workers: int = 2, extra: Sequence[str] = (), host: str = "127.0.0.1") -> list[str]:
    """The one command line every launcher (`make run`, `helix serve`, the tests, the bench) starts
    gunicorn with. A worker process takes up to HELIX_MAX_EVENT_STREAMS live streams and
    CONNECTIONS_BESIDE_STREAMS other connections. `host` is loopback but for `helix serve` in a
    container, which listens on every address."""
    connections = Config.from_env(os.environ).max_event_streams + CONNECTIONS_BESIDE_STREAMS
    return [sys.executable, "-m", "gunicorn", "--no-control-socket", "-k", f"{__name__}.JsonErrorWorker",
            "-c", "python:controlplane.http.gunicorn_hooks",
            "-w", str(workers), "--worker-connections", str(connections), "--keep-alive", str(HEADER_SECONDS),
            "--graceful-timeout", str(GRACEFUL_SECONDS),
            "-b", f"{host}:{port}", *extra, APP]


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's util.write_error (same arguments and use), with a JSON body instead of HTML."""
    body = json.dumps({"error": f"{reason}: {mesg}" if mesg else reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


class JsonErrorWorker(GeventWorker):
    """gunicorn's gevent worker (`-k gevent`), answering gunicorn's own refusals in JSON and
    dropping clients that stall.

    gunicorn's Worker.handle_error decides the status and message of a refused request (and logs
    it), then writes the page with util.write_error, its only caller. gunicorn has no setting for
    that page, so in this worker's process that one function writes JSON instead: the statuses and
    messages stay gunicorn's own."""

    def init_process(self) -> None:
        util.write_error = write_json_error
        _raise_open_file_limit(self.worker_connections + 200)
        # Longer than the wait for headers, whose own timeout drops a stalled client quietly.
        self.client_idle_seconds = max(float(os.environ.get("HELIX_CLIENT_IDLE_SECONDS") or CLIENT_IDLE_SECONDS),
                                       HEADER_SECONDS + 1)
        super().init_process()

    def handle(self, listener, client, addr) -> None:
        """GeventWorker.handle makes the socket blocking with no timeout, then serves it; this
        gives it the idle timeout instead."""
        client.settimeout(self.client_idle_seconds)
        AsyncWorker.handle(self, listener, client, addr)


def _raise_open_file_limit(needed: int) -> None:
    """Every connection is an open file, and a system's usual soft limit (1,024) is far below the
    connections a worker takes: raise it toward the hard limit, which only an operator can raise."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < needed:
        logging.getLogger(__name__).warning(
            "open files are limited to %d (hard limit): fewer connections than the %d this worker may take",
            hard, needed)
