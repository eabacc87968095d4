"""The Account page: the user's API keys (listed, created and shown once, deleted through the
API-keys routes by the page's script) and the Helix reference's curl lines for this server."""
from __future__ import annotations

from flask import Blueprint, g, render_template, request

from controlplane.web.sign_in import signed_in_page

bp = Blueprint("account", __name__)


@bp.get("/account")
@signed_in_page
def account():
    return render_template("account.html", user=g.user, server=request.host_url.rstrip("/"))
