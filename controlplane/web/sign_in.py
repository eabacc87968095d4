"""Signing in with email and password, signing up (when HELIX_ALLOW_SIGN_UP is on), signing out,
and `signed_in_page`, the decorator that sends a browser with no sign-in to the sign-in page."""
from __future__ import annotations

import functools
from typing import Callable
from urllib.parse import urlsplit

import psycopg
from flask import Blueprint, Response, current_app, g, redirect, render_template, request, url_for
from itsdangerous import BadSignature, URLSafeSerializer

from controlplane.accounts import auth
from controlplane.accounts import store as accounts
from controlplane.errors import Forbidden
from controlplane.http.fields import text_field
from controlplane.storage import db

bp = Blueprint("sign_in", __name__)

MAX_EMAIL_CHARS = 254
FAILURE_WINDOW_SECONDS = 15 * 60
# Failed sign-ins are counted three ways, each in a 15-minute window shared by every replica
# (Redis), with a limit that is a multiple of HELIX_MAX_FAILED_SIGN_INS:
# - one email from one address (1x): someone guessing one password is stopped, and only there;
# - one address, any email (5x): one machine trying many accounts;
# - one email, any address (10x): many machines guessing one password. A browser that signed in
#   as that email before keeps a cookie that passes this one, so a stranger cannot lock a user out.
_FAILURE_SCOPES = (("pair", 1), ("address", 5), ("email", 10))
KNOWN_BROWSER_COOKIE = "helix_known"
KNOWN_BROWSER_DAYS = 365


def _failure_keys(email: str) -> dict[str, str]:
    address = request.remote_addr or ""
    return {"pair": "helix:sign-in-failures:pair:" + accounts.digest(f"{accounts.email_digest(email)}|{address}"),
            "address": "helix:sign-in-failures:address:" + accounts.digest(address),
            "email": "helix:sign-in-failures:email:" + accounts.email_digest(email)}


def _known_browser(email: str) -> bool:
    """Whether this browser signed in as `email` before (its signed cookie names it)."""
    cookie = request.cookies.get(KNOWN_BROWSER_COOKIE)
    if not cookie:
        return False
    try:
        known = _browser_signer().loads(cookie)
    except BadSignature:
        return False
    return isinstance(known, list) and accounts.email_digest(email) in known


def _browser_signer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.secret_key, salt="known-browser")


def _too_many_failures(email: str) -> tuple[int, str]:
    """Seconds until this email may be tried again from here, and which count stopped it, or 0."""
    redis = current_app.extensions["redis"]
    keys = _failure_keys(email)
    limit = current_app.config["HELIX"].max_failed_sign_ins
    counts = dict(zip(keys, redis.mget(list(keys.values()))))
    for scope, times in _FAILURE_SCOPES:
        if scope == "email" and _known_browser(email):
            continue
        if int(counts[scope] or 0) >= limit * times:
            return max(1, redis.ttl(keys[scope])), scope
    return 0, ""


def _count_failure(email: str) -> None:
    with current_app.extensions["redis"].pipeline() as pipe:
        for key in _failure_keys(email).values():
            pipe.set(key, 0, ex=FAILURE_WINDOW_SECONDS, nx=True)  # the window starts at the first
            pipe.incr(key)
        pipe.execute()


def signed_in_page(view: Callable) -> Callable:
    """A page for signed-in users; anyone else goes to the sign-in page and comes back after."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        user = auth.signed_in_user()
        if user is None:
            return redirect(url_for("sign_in.sign_in", next=request.full_path.rstrip("?")))
        auth.check_csrf()
        g.user = g.page_user = user
        return view(*args, **kwargs)

    return wrapper


def _next_page() -> str:
    """Where to go after signing in: a path of this site only, never another site."""
    target = request.values.get("next", "")
    parts = urlsplit(target)
    if not target.startswith("/") or target.startswith("//") or parts.scheme or parts.netloc or "\\" in target:
        return url_for("sessions_pages.list_sessions")
    return target


def _lifetime():
    return current_app.permanent_session_lifetime


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    if request.method == "GET":
        if auth.signed_in_user() is not None:
            return redirect(_next_page())
        return render_template("sign_in.html", next=_next_page(), email="")
    auth.check_csrf()
    email = text_field(request.form, "email", MAX_EMAIL_CHARS).strip()
    password = text_field(request.form, "password", accounts.MAX_PASSWORD_CHARS + 1)
    wait, scope = _too_many_failures(email)
    if wait:
        where = {"pair": "for this email from here", "address": "from here",
                 "email": "for this email from anywhere"}[scope]
        return render_template("sign_in.html", next=_next_page(), email=email,
                               error=f"Too many failed sign-ins {where}: try again in {-(-wait // 60)}"
                                     " minutes."), 429
    with db.transaction() as conn:
        user = accounts.user_for_password(conn, email, password) if email and password else None
    if user is None:
        _count_failure(email)
        return render_template("sign_in.html", next=_next_page(), email=email,
                               error="That email and password do not match an account."), 401
    current_app.extensions["redis"].delete(_failure_keys(email)["pair"])
    auth.sign_in(user, _lifetime())
    return _remember_browser(redirect(_next_page()), email)


def _remember_browser(response: Response, email: str) -> Response:
    """This browser signed in as `email`: a signed cookie says so, so that failures of strangers
    for that email never lock it out (the last few emails signed in here)."""
    known = []
    cookie = request.cookies.get(KNOWN_BROWSER_COOKIE)
    if cookie:
        try:
            loaded = _browser_signer().loads(cookie)
            known = [d for d in loaded if isinstance(d, str)] if isinstance(loaded, list) else []
        except BadSignature:
            pass
    digest = accounts.email_digest(email)
    known = ([digest] + [d for d in known if d != digest])[:5]
    response.set_cookie(KNOWN_BROWSER_COOKIE, _browser_signer().dumps(known), max_age=KNOWN_BROWSER_DAYS * 86400,
                        httponly=True, samesite="Lax",
                        secure=current_app.session_interface.get_cookie_secure(current_app))
    return response


@bp.route("/sign-up", methods=["GET", "POST"])
def sign_up():
    if not current_app.config["HELIX"].allow_sign_up:
        raise Forbidden("Sign-up is closed on this server: ask an administrator for an account.")
    if request.method == "GET":
        return render_template("sign_up.html", email="")
    auth.check_csrf()
    email = text_field(request.form, "email", MAX_EMAIL_CHARS).strip()
    password = text_field(request.form, "password", accounts.MAX_PASSWORD_CHARS + 1)
    error = None
    if "@" not in email or email.startswith("@") or email.endswith("@") or any(c.isspace() for c in email):
        error = "Enter an email address such as name@example.com."
    else:
        error = accounts.password_problem(password)
        if error is None and password != request.form.get("confirm", ""):
            error = "The two passwords are not the same."
    if error is None:
        try:
            with db.transaction() as conn:
                user = accounts.create_user(conn, email, password=password)
        except psycopg.errors.UniqueViolation:
            error = "An account with that email exists already: sign in instead."
    if error is not None:
        return render_template("sign_up.html", email=email, error=error), 400
    auth.sign_in(user, _lifetime())
    return redirect(url_for("sessions_pages.list_sessions"))


@bp.post("/sign-out")
def sign_out():
    auth.check_csrf()
    auth.sign_out()
    return redirect(url_for("sign_in.sign_in"))
