"""Request authentication: users by API key or by the web app's sign-in cookie, runners by runner
token, never one for the other.

A request that sends a key (an Authorization header, or ?access_token= where allowed) is judged
by the key alone, exactly as before the web app existed, and needs no CSRF token. A request that
sends none may be a signed-in browser: its cookie names a sign-in (accounts/sign_ins.py), and a request
that changes anything must also carry the page's CSRF token (Flask-WTF), since a browser sends
cookies with requests other sites make it send.

Valid API keys and sign-ins are remembered for a few seconds per process, so a status poll costs
no key lookup: one indexed query for a poll. A key deleted (or a browser signed out) here stops
working at once; on other replicas within SECRET_CACHE_SECONDS. Runner tokens are looked up on
every request, never remembered: a revoked token (`helix runners revoke`) is refused by every
replica from its next request on, and a runner's request does database work anyway (one more
indexed query).
"""
from __future__ import annotations

import functools
import threading
from datetime import timedelta
from typing import Callable

from cachetools import TTLCache
from flask import Flask, g, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect

from controlplane.accounts import sign_ins
from controlplane.accounts import store as accounts
from controlplane.config import Config
from controlplane.errors import BadRequest, Unauthorized
from controlplane.storage import db
from shared.types import API_KEY_PREFIX, RUNNER_TOKEN_PREFIX

# The routes that take their key in the query, as in Helix: a browser's EventSource and <img> cannot
# set headers. Anywhere else a key in a URL is refused, not read: URLs end up in logs, histories
# and proxies (the access log writes the path alone).
QUERY_KEY_ENDPOINTS = frozenset({"sessions.session_events", "filestore.viewer", "user_socket.user_socket"})


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The key in the session cookie that holds the sign-in token.
SIGN_IN = "sign_in"
csrf = CSRFProtect()


def _query_names_key() -> bool:
    """Whether the query has ?access_token= (its raw text looked at first: most requests have none)."""
    return "access_token" in request.environ.get("QUERY_STRING", "") and "access_token" in request.args


def _sends_key() -> bool:
    return "HTTP_AUTHORIZATION" in request.environ or _query_names_key()


def bearer_token(authorization: str) -> str:
    """The token of an `Authorization: Bearer <token>` header ("" when it names none)."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _bearer() -> str:
    in_query = _query_names_key()
    if in_query and not (request.endpoint in QUERY_KEY_ENDPOINTS and request.method == "GET"):
        raise Unauthorized("?access_token= is accepted only by GET /api/v1/sessions/{id}/events, the filestore"
                           " viewer and the user websocket: send the key as 'Authorization: Bearer <key>'")
    token = bearer_token(request.headers.get("Authorization", ""))
    if token:
        return token
    if in_query and request.args.get("access_token"):
        return request.args["access_token"]
    raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")


SECRET_CACHE_SECONDS = 5
_valid_secrets: TTLCache = TTLCache(maxsize=10_000, ttl=SECRET_CACHE_SECONDS)
_cache_lock = threading.Lock()


def forget_secrets() -> None:
    """Called when a key is deleted: this replica must refuse it from now on."""
    with _cache_lock:
        _valid_secrets.clear()


def _cache_key(lookup: Callable, secret: str) -> tuple[str, str]:
    return lookup.__name__, accounts.digest(secret)


def _lookup_cached(lookup: Callable, secret: str):
    key = _cache_key(lookup, secret)
    with _cache_lock:
        found = _valid_secrets.get(key)
    if found is None:
        with db.transaction() as conn:
            found = lookup(conn, secret)
        if found is not None:
            with _cache_lock:
                _valid_secrets[key] = found
    return found


def remembered_key_user(authorization: str) -> dict | None:
    """The user of an `Authorization: Bearer <API key>` header when this process checked that key
    within SECRET_CACHE_SECONDS; None otherwise (no database lookup: the status poll's shortcut)."""
    token = bearer_token(authorization)
    if not token.startswith(API_KEY_PREFIX):
        return None
    with _cache_lock:
        return _valid_secrets.get(_cache_key(accounts.user_for_api_key, token))


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


_require_key = _require(API_KEY_PREFIX, "API key", accounts.user_for_api_key, "user")


def signed_in_user() -> dict | None:
    """The user this browser signed in as, or None; never looks at API keys."""
    token = session.get(SIGN_IN)
    if not isinstance(token, str) or not token:
        return None
    return _lookup_cached(sign_ins.user_for_sign_in, token)


def check_csrf() -> None:
    """Refuses (CSRFError, 403) a state-changing request without the page's CSRF token. A form
    field whose name could not be read (a malformed multipart part) is a 400 first: the token
    check looks at every field's name."""
    if request.method not in SAFE_METHODS:
        if any(not isinstance(name, str) for name in request.form.keys()):
            raise BadRequest("a form field's name could not be read: quote each part's name in its"
                             " Content-Disposition header")
        csrf.protect()


def require_user(view: Callable) -> Callable:
    """A route for users: by API key when the request sends one, else by the sign-in cookie
    (with a CSRF token for anything but reading)."""
    keyed = _require_key(view)

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if _sends_key():
            return keyed(*args, **kwargs)
        user = signed_in_user()
        if user is None:
            _bearer()  # raises the API's own 401: no key sent
        check_csrf()
        g.user = user
        return view(*args, **kwargs)

    return wrapper


def sign_in(user: dict, lifetime: timedelta) -> None:
    """Signs this browser in as `user`: a new session cookie (a fresh CSRF token with it)."""
    with db.transaction() as conn:
        token = sign_ins.create(conn, user["id"], lifetime)
    session.clear()
    session.permanent = True
    session[SIGN_IN] = token


def sign_out() -> None:
    token = session.get(SIGN_IN)
    if isinstance(token, str) and token:
        with db.transaction() as conn:
            sign_ins.delete(conn, token)
        forget_secrets()
    session.clear()


class _SessionCookies(SecureCookieSessionInterface):
    """Flask's signed session cookie, Secure when the request came over https ("auto"). A request
    without the cookie (every API-key request) gets an empty session without Flask building its
    signing serializer on the way in and reading the cookie settings on the way out: a status
    poll pays for neither."""

    def open_session(self, app: Flask, request):
        if app.secret_key and "HTTP_COOKIE" not in request.environ:
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session, response) -> None:
        if session or session.modified or session.accessed:
            super().save_session(app, session, response)

    def get_cookie_secure(self, app: Flask) -> bool:
        setting = app.config["HELIX"].cookie_secure
        return request.is_secure if setting == "auto" else setting == "true"


def init_app(app: Flask, config: Config) -> None:
    """The session cookie (HttpOnly, SameSite=Lax, Secure per HELIX_COOKIE_SECURE) and CSRF
    protection, checked only where check_csrf() is called: never on API-key requests."""
    if config.secret_key:
        app.secret_key = config.secret_key
    else:
        with app.app_context(), db.transaction() as conn:
            app.secret_key = sign_ins.cookie_signing_key(conn)
    app.session_interface = _SessionCookies()
    app.config.update(SESSION_COOKIE_NAME="helix_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", PERMANENT_SESSION_LIFETIME=timedelta(days=config.sign_in_days),
                      WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_TIME_LIMIT=None)
    csrf.init_app(app)


require_runner = _require(RUNNER_TOKEN_PREFIX, "runner token", accounts.runner_token_row, "runner_token",
                          cached=False)
