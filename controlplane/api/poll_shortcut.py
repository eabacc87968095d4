"""Status polls answered from this process's copy before Flask sees them.

The status poll (GET /api/v1/sessions/{id}) is the platform's most frequent request: curl scripts
and SDKs poll many times per change, and most polls find the session unchanged. When the poll's
API key was checked by this process within the last few seconds (accounts/auth.py remembers it)
and the copy holds the session's answer for the key's user (sessions/cache.py, which first makes
sure every change committed before the poll was heard), the answer is already bytes. Flask would
then add its request context, URL routing and its hooks: about as much CPU again as the rest of
the poll (bench/README.md, P1).

This WSGI middleware answers such a poll itself with those bytes and the headers Flask's answer
has (Content-Type, Content-Length, X-Request-Id), counted in the same metrics and access log. Any
other request goes to Flask unchanged: another route or method, a query string, no key (a
signed-in browser), a key not remembered here, a session the copy does not hold.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Callable, Iterable

from flask import Flask

from controlplane import metrics
from controlplane.accounts import auth
from controlplane.http import request_context
from controlplane.sessions.cache import SessionCache
from shared import logs

POLL_ENDPOINT = "sessions.get_session"

log = logging.getLogger(__name__)


class PollShortcut:
    """Wraps a Flask app's wsgi_app (app.wsgi_app = PollShortcut(app, ...))."""

    def __init__(self, app: Flask, cache: SessionCache, access: str):
        self.flask_wsgi = app.wsgi_app
        self.cache = cache
        self.access = access
        rule, = (r for r in app.url_map.iter_rules() if r.endpoint == POLL_ENDPOINT)
        prefix, _, variable = rule.rule.partition("<")
        if variable != "session_id:session_id>" or "GET" not in (rule.methods or ()):
            raise RuntimeError(f"the status poll's route is no longer GET <prefix>/<session_id>: {rule.rule}")
        self.path = re.compile(re.escape(prefix) + r"([^/]+)")
        self.route = request_context.template_of(rule.rule)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] == "GET" and not environ.get("QUERY_STRING"):
            found = self.path.fullmatch(environ.get("PATH_INFO", ""))
            if found is not None:
                try:
                    answered = self._from_copy(environ, found.group(1), start_response)
                except Exception:  # noqa: BLE001 - Flask answers it as if the shortcut were not there
                    log.warning("status poll shortcut failed; Flask answers", exc_info=True)
                    answered = None
                if answered is not None:
                    return answered
        return self.flask_wsgi(environ, start_response)

    def _from_copy(self, environ: dict, session_id: str, start_response: Callable) -> list[bytes] | None:
        started = time.perf_counter()
        user = auth.remembered_key_user(environ.get("HTTP_AUTHORIZATION", ""))
        if user is None:
            return None
        body = self.cache.get(session_id, user["id"])
        if body is None:
            return None
        metrics.POLL_FROM_COPY.inc()
        request_id = request_context.request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  (request_context.REQUEST_ID_HEADER, request_id)])
        metrics.count_request("GET", self.route, 200, started)
        if request_context.wants_access_record(self.access, "GET", 200, "sessions"):
            token = logs.bind(request_id=request_id, session_id=session_id)
            try:
                request_context.write_access_record("GET", environ.get("PATH_INFO", ""), 200, self.route, started)
            finally:
                logs.unbind(token)
        return [body]
