"""The Usage page: what the user's finished work used over the last 30 days, as a chart by day
and a table, with their plan's limits beside it; its script reads GET /api/v1/usage."""
from __future__ import annotations

from flask import Blueprint, g, render_template

from controlplane.web.sign_in import signed_in_page

bp = Blueprint("usage_page", __name__)


@bp.get("/usage")
@signed_in_page
def usage():
    limits = g.user.get("plan_limits")
    return render_template("usage.html", plan=g.user.get("plan"), limits=limits.stored() if limits else {})
