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


def _require(prefix: str, what: str, lookup: Callable, attribute: str) -> Callable:
    """A decorator admitting only secrets of one kind: user keys never pass as runner tokens."""

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            secret = _bearer()
            if not secret.startswith(prefix):
                raise Unauthorized(f"this route takes a {what} (it starts {prefix!r})")
            with db.transaction() as conn:
                found = lookup(conn, secret)
            if found is None:
                raise Unauthorized(f"{what} is not valid")
            setattr(g, attribute, found)
            return view(*args, **kwargs)

        return wrapper

    return decorator


require_user = _require(API_KEY_PREFIX, "API key", accounts.user_for_api_key, "user")
require_runner = _require(RUNNER_TOKEN_PREFIX, "runner token", accounts.runner_token_row, "runner_token")
