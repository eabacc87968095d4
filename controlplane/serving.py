"""Serving the control plane under gunicorn: its command line, and the worker class it runs.

gunicorn answers some requests itself, before Flask sees them: a bad request line, headers over
8 KB or too many of them, a URL over 4 KB, an invalid Content-Length. It writes those answers as
HTML pages; this worker writes them as the API's JSON errors, `{"error": "..."}`, like every
other answer of the platform.
"""
from __future__ import annotations

import json
import sys
from typing import Sequence

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

APP = "controlplane.app:create_app()"


def gunicorn_command(port: int, workers: int = 2, threads: int = 32, extra: Sequence[str] = ()) -> list[str]:
    """The one command line every launcher (`make run`, the tests, the bench) starts gunicorn with."""
    return [sys.executable, "-m", "gunicorn", "--no-control-socket", "-k", f"{__name__}.JsonErrorWorker",
            "-w", str(workers), "--threads", str(threads), "-b", f"127.0.0.1:{port}", *extra, APP]


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's util.write_error (same arguments and use), with a JSON body instead of HTML."""
    body = json.dumps({"error": f"{reason}: {mesg}" if mesg else reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


class JsonErrorWorker(ThreadWorker):
    """gunicorn's threaded worker (`-k gthread`), answering gunicorn's own refusals in JSON.

    gunicorn's Worker.handle_error decides the status and message of a refused request (and logs
    it), then writes the page with util.write_error, its only caller. gunicorn has no setting for
    that page, so in this worker's process that one function writes JSON instead: the statuses and
    messages stay gunicorn's own."""

    def init_process(self) -> None:
        util.write_error = write_json_error
        super().init_process()
