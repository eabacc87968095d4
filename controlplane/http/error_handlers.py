"""Every error leaves the API as JSON `{"error": "..."}` with a status that says what was wrong;
on the web app's pages, as an HTML page saying the same (the app passes web/error_pages.py in,
so request plumbing never imports the web app)."""
from __future__ import annotations

import logging
from typing import Any, Protocol

import psycopg
import redis.exceptions
from flask import Flask, jsonify, make_response
from flask_wtf.csrf import CSRFError
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import HTTPException

from controlplane.errors import ApiError

log = logging.getLogger(__name__)


class ErrorPages(Protocol):
    """How the web app answers an error on one of its pages."""

    def is_page_request(self) -> bool: ...

    def error_page(self, message: str, status: int) -> Any: ...


def init_app(app: Flask, pages: ErrorPages) -> None:
    def _reply(message: str, status: int, **details: object):
        if pages.is_page_request():
            return pages.error_page(message, status)
        return jsonify(error=message, **details), status

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        response = make_response(_reply(err.message, err.status, **err.details))
        response.headers.update(err.headers)
        return response

    @app.errorhandler(CSRFError)
    def _csrf_error(err: CSRFError):
        """A signed-in browser's request that changes something came without its page's token:
        another site may have sent it. API-key requests are never asked for one."""
        return _reply(f"refused: {err.description} A signed-in browser must send the page's CSRF token"
                      " (the form's csrf_token field, or the X-CSRFToken header); reload the page and"
                      " try again.", 403)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        message = {
            404: "no such route",
            405: "method not allowed on this route",
            413: "request body is larger than this server accepts",
        }.get(err.code or 0, err.description or err.name)
        if pages.is_page_request() and err.code == 404:
            message = "There is no page at this address."
        response = make_response(_reply(message, err.code or 400))
        # What the error itself says in headers: a 405's Allow (the methods the route takes).
        response.headers.update({k: v for k, v in err.get_headers() if k.lower() != "content-type"})
        return response

    @app.errorhandler(ParseException)
    def _malformed_body(err: ParseException):
        """gunicorn parses a chunked body only as the app reads it, so a malformed one (a chunk
        size of 'ZZ', say) surfaces here: the client's mistake, not the server's."""
        return _reply(f"malformed request body: {err}", 400)

    @app.errorhandler(psycopg.OperationalError)
    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def _store_unavailable(err: Exception):
        log.warning("a store is unavailable: %s", err)
        return _reply("the service's database or queue is unavailable: retry shortly", 503)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("unhandled error")
        return _reply("internal error", 500)
