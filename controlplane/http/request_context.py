"""Each request's ids for the logs: a request id (the client's X-Request-Id when it is a plain
token, else a new one; sent back in X-Request-Id) and the session and interaction its route names.
Every log record written while the request is answered carries them (shared/logs.py).

One access record per request goes to the `helix.access` logger: by default for users' requests
that change something, server errors and runners' refused reports (status polls, streams and
runners' accepted reports are not logged: there are thousands a second), every request with
HELIX_ACCESS_LOG=all, none with `off`.
"""
from __future__ import annotations

import logging
import os
import re
import time

from flask import Flask, g, request

from shared import logs

REQUEST_ID_HEADER = "X-Request-Id"
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:@+-]{1,128}")
ACCESS_LOG_CHOICES = ("writes", "all", "off")
access_log = logging.getLogger("helix.access")


def request_id(sent: str) -> str:
    """The client's X-Request-Id when it is a plain token, else a new one."""
    return sent if _PLAIN_ID.fullmatch(sent) else os.urandom(16).hex()


def wants_access_record(access: str, method: str, status: int, blueprint: str | None) -> bool:
    """With `writes` (the default): a user's write, any server error, and a runner's refused
    report. A runner's accepted reports (every few seconds per runner and per running job) are
    not logged."""
    if access != "writes":
        return access == "all"
    if status >= 500:
        return True
    if blueprint == "runner":
        return status >= 400
    return method not in ("GET", "HEAD", "OPTIONS")


def write_access_record(method: str, path: str, status: int, route: str | None, started: float | None) -> None:
    access_log.info("%s %s %s", method, path, status,
                    extra={**logs.current(), "method": method, "path": path, "status": status, "route": route,
                           "duration_ms": round((time.perf_counter() - started) * 1000, 2) if started else None})


def init_app(app: Flask, access: str = "writes") -> None:
    @app.before_request
    def _bind_ids():
        g.request_id = request_id(request.headers.get(REQUEST_ID_HEADER, ""))
        g.log_started = time.perf_counter()
        args = request.view_args or {}
        ids = {"session_id": args.get("session_id"), "interaction_id": args.get("interaction_id")}
        g.log_ids = logs.bind(request_id=g.request_id, **{k: v for k, v in ids.items() if isinstance(v, str)})

    @app.after_request
    def _send_id(response):
        response.headers[REQUEST_ID_HEADER] = g.get("request_id") or os.urandom(16).hex()
        if wants_access_record(access, request.method, response.status_code, request.blueprint):
            write_access_record(request.method, request.path, response.status_code, route_template(),
                                g.get("log_started"))
        return response

    @app.teardown_request
    def _unbind(_exc):
        token = g.pop("log_ids", None)
        if token is not None:
            try:
                logs.unbind(token)
            except ValueError:  # answered in another context (a stream's last part): nothing to undo
                pass


def route_template() -> str | None:
    """The route the request matched, its variables named without their converters
    (/api/v1/sessions/<session_id>): a label per route, never per path."""
    rule = request.url_rule
    return template_of(rule.rule) if rule is not None else None


def template_of(rule: str) -> str:
    """/api/v1/sessions/<session_id:session_id> -> /api/v1/sessions/<session_id>"""
    return re.sub(r"<\w+:(\w+)>", r"<\1>", rule)
