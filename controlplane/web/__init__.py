"""The web app: server-rendered pages (templates/) whose scripts (static/) call the JSON API with
the sign-in cookie. No build step and no CDN: everything it needs ships in this package.

One routes module per page family: sign_in.py (sign in, sign up, sign out), account.py (API
keys), sessions.py (the list, a new session, one session's page), usage.py (what the user's work
used, and their plan), admin.py (runners, queues, plans and scheduling decisions, for admins);
error_pages.py answers errors on pages in HTML.
"""
from __future__ import annotations

from flask import Blueprint, Flask, Response

from controlplane.web.error_pages import is_page_request

# The static files, at /assets/...
assets = Blueprint("web", __name__, static_folder="static", static_url_path="/assets",
                   template_folder="templates")

# Pages run only this origin's own scripts and styles, and no one may frame them: a reply that
# somehow reached the page as markup still could not run (the scripts escape it anyway).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:;"
                           " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
                           " frame-ancestors 'none'")


def _page_headers(response: Response) -> Response:
    if is_page_request():
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.mimetype == "text/html":
            response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    from controlplane.web import account, admin, sessions, sign_in, usage

    app.register_blueprint(assets)
    for bp in (sign_in.bp, account.bp, sessions.bp, admin.bp, usage.bp):
        app.register_blueprint(bp)
    app.after_request(_page_headers)
    app.jinja_env.globals["sign_up_open"] = lambda: app.config["HELIX"].allow_sign_up
