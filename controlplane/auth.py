"""Request authentication: users by API key, runners by runner token, never one for the other."""
from __future__ import annotations

import functools
from typing import Callable

from flask import g, request

from controlplane import accounts, db
from controlplane.errors import Unauthorized
from shared.types import API_KEY_PREFIX, RUNNER_TOKEN_PREFIX


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    # EventSource in browsers cannot set headers: the events route also takes ?access_token=.
    if request.method == "GET" and request.args.get("access_token"):
        return request.args["access_token"]
    raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")


def require_user(view: Callable) -> Callable:
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        key = _bearer()
        if not key.startswith(API_KEY_PREFIX):
            raise Unauthorized(f"this route takes a user API key (it starts {API_KEY_PREFIX!r})")
        with db.transaction() as conn:
            user = accounts.user_for_api_key(conn, key)
        if user is None:
            raise Unauthorized("API key is not valid")
        g.user = user
        return view(*args, **kwargs)

    return wrapper


def require_runner(view: Callable) -> Callable:
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        token = _bearer()
        if not token.startswith(RUNNER_TOKEN_PREFIX):
            raise Unauthorized(f"this route takes a runner token (it starts {RUNNER_TOKEN_PREFIX!r})")
        with db.transaction() as conn:
            row = accounts.runner_token_row(conn, token)
        if row is None:
            raise Unauthorized("runner token is not valid")
        g.runner_token = row
        return view(*args, **kwargs)

    return wrapper
