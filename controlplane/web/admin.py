"""The admin page: runners, queues and recent scheduling decisions, read by its script from
GET /api/v1/dashboard (the fleet API) every few seconds. Admins only; others get a 403 page."""
from __future__ import annotations

from flask import Blueprint, g, render_template

from controlplane.errors import Forbidden
from controlplane.web.sign_in import signed_in_page

bp = Blueprint("admin", __name__)


@bp.get("/admin")
@signed_in_page
def admin():
    if not g.user.get("is_admin"):
        raise Forbidden("This page is for administrators.")
    return render_template("admin.html")
