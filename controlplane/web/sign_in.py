"""Signing in with email and password, signing up (when HELIX_ALLOW_SIGN_UP is on), signing out,
and `signed_in_page`, the decorator that sends a browser with no sign-in to the sign-in page."""
from __future__ import annotations

import functools
from typing import Callable
from urllib.parse import urlsplit

import psycopg
from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from controlplane.accounts import auth
from controlplane.accounts import store as accounts
from controlplane.errors import Forbidden
from controlplane.http.fields import text_field
from controlplane.storage import db

bp = Blueprint("sign_in", __name__)

MAX_EMAIL_CHARS = 254
FAILURE_WINDOW_SECONDS = 15 * 60


def _failures_key(email: str) -> str:
    return "helix:sign-in-failures:" + accounts.digest(email.strip().lower())


def _too_many_failures(email: str) -> int:
    """Seconds until this email may try again, or 0. Shared by every replica (Redis)."""
    redis = current_app.extensions["redis"]
    key = _failures_key(email)
    failures = int(redis.get(key) or 0)
    if failures < current_app.config["HELIX"].max_failed_sign_ins:
        return 0
    return max(1, redis.ttl(key))


def _count_failure(email: str) -> None:
    redis = current_app.extensions["redis"]
    with redis.pipeline() as pipe:
        pipe.set(_failures_key(email), 0, ex=FAILURE_WINDOW_SECONDS, nx=True)  # the window starts at the first
        pipe.incr(_failures_key(email))
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
    wait = _too_many_failures(email)
    if wait:
        return render_template("sign_in.html", next=_next_page(), email=email,
                               error=f"Too many failed sign-ins for this email: try again in {-(-wait // 60)}"
                                     " minutes."), 429
    with db.transaction() as conn:
        user = accounts.user_for_password(conn, email, password) if email and password else None
    if user is None:
        _count_failure(email)
        return render_template("sign_in.html", next=_next_page(), email=email,
                               error="That email and password do not match an account."), 401
    current_app.extensions["redis"].delete(_failures_key(email))
    auth.sign_in(user, _lifetime())
    return redirect(_next_page())


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
