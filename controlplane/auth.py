"""Request authentication: users by API key, runners by runner token, never one for the other.

Valid API keys are remembered for a few seconds per process, so a status poll costs no key
lookup: one indexed query for a poll. A key deleted here stops working at once; on other replicas
within SECRET_CACHE_SECONDS. Runner tokens are looked up on every request, never remembered: a
revoked token (`helix runners revoke`) is refused by every replica from its next request on, and a
runner's request does database work anyway (one more indexed query).
"""
from __future__ import annotations

import functools
import threading
from typing import Callable

from cachetools import TTLCache

from flask import g, request

from controlplane import accounts, db
from controlplane.errors import Unauthorized
from shared.types import API_KEY_PREFIX, RUNNER_TOKEN_PREFIX


# The one route that takes its key in the query: EventSource in browsers cannot set headers.
# Anywhere else a key in a URL is refused, not read: URLs end up in logs, histories and proxies.
QUERY_KEY_ENDPOINT = "sessions.session_events"


def _bearer() -> str:
    if "access_token" in request.args and not (request.endpoint == QUERY_KEY_ENDPOINT and request.method == "GET"):
        raise Unauthorized("?access_token= is accepted only by GET /api/v1/sessions/{id}/events:"
                           " send the key as 'Authorization: Bearer <key>'")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.args.get("access_token"):
        return request.args["access_token"]
    raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")


SECRET_CACHE_SECONDS = 5
_valid_secrets: TTLCache = TTLCache(maxsize=10_000, ttl=SECRET_CACHE_SECONDS)
_cache_lock = threading.Lock()


def forget_secrets() -> None:
    """Called when a key is deleted: this replica must refuse it from now on."""
    with _cache_lock:
        _valid_secrets.clear()


def _lookup_cached(lookup: Callable, secret: str):
    cache_key = (lookup.__name__, accounts.digest(secret))
    with _cache_lock:
        found = _valid_secrets.get(cache_key)
    if found is None:
        with db.transaction() as conn:
            found = lookup(conn, secret)
        if found is not None:
            with _cache_lock:
                _valid_secrets[cache_key] = found
    return found


def _lookup_now(lookup: Callable, secret: str):
    with db.transaction() as conn:
        return lookup(conn, secret)


def _require(prefix: str, what: str, lookup: Callable, attribute: str, cached: bool = True) -> Callable:
    """A decorator admitting only secrets of one kind: user keys never pass as runner tokens."""

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            secret = _bearer()
            if not secret.startswith(prefix):
                raise Unauthorized(f"this route takes a {what} (it starts {prefix!r})")
            found = _lookup_cached(lookup, secret) if cached else _lookup_now(lookup, secret)
            if found is None:
                raise Unauthorized(f"{what} is not valid" + ("" if cached else " (unknown or revoked)"))
            setattr(g, attribute, found)
            return view(*args, **kwargs)

        return wrapper

    return decorator


require_user = _require(API_KEY_PREFIX, "API key", accounts.user_for_api_key, "user")
require_runner = _require(RUNNER_TOKEN_PREFIX, "runner token", accounts.runner_token_row, "runner_token",
                          cached=False)
