"""The Account page: the user's API keys (listed, created and shown once, deleted through the
API-keys routes by the page's script), the Helix reference's curl lines for this server, and
deleting the account for good (erasure/users.py), with the user's password as confirmation."""
from __future__ import annotations

from flask import Blueprint, current_app, g, render_template, request

from controlplane.accounts import auth
from controlplane.accounts import store as accounts
from controlplane.erasure.users import erase_user
from controlplane.http.fields import text_field
from controlplane.storage import db
from controlplane.web.sign_in import signed_in_page

bp = Blueprint("account", __name__)


@bp.get("/account")
@signed_in_page
def account():
    return render_template("account.html", user=g.user, server=request.host_url.rstrip("/"))


@bp.post("/account/delete")
@signed_in_page
def delete_account():
    password = text_field(request.form, "password", accounts.MAX_PASSWORD_CHARS + 1)
    with db.transaction() as conn:
        confirmed = accounts.user_for_password(conn, g.user["email"], password) if password else None
    if confirmed is None or confirmed["id"] != g.user["id"]:
        return render_template("account.html", user=g.user, server=request.host_url.rstrip("/"),
                               delete_error="That is not your password: your account was not deleted."), 401
    config = current_app.config["HELIX"]
    with db.pool().connection() as conn:
        erased = erase_user(conn, current_app.extensions["redis"], current_app.extensions["dispatcher"],
                            current_app.extensions["filestore"], g.user["id"],
                            keep_usage_anonymised=config.deleted_user_usage == "anonymise")
    auth.sign_out()
    g.page_user = None  # the page is drawn signed out
    return render_template("account_deleted.html", erased=erased)
