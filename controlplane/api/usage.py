"""GET /api/v1/usage: what the caller's finished work used (metering), by day, model or key, with
their plan and its limits beside it, and their credits this month against the plan's (a warning
from 80%), and the bytes their files take now against the plan's. An admin may ask for
everyone's with `all=true` (and group it by user)."""
from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from controlplane.accounts.auth import require_user
from controlplane.contract.operations import documented
from controlplane.errors import BadRequest, Forbidden
from controlplane.sessions.views import iso_time
from controlplane.storage import db
from controlplane.storage.filestore import UserFiles
from controlplane.usage import metering

bp = Blueprint("usage", __name__, url_prefix="/api/v1/usage")

@bp.get("")
@require_user
@documented("What the caller's work used, grouped, with their plan's limits and this month's credits",
            query={"from": {"type": "string", "description": "a date or time (default: 30 days ago)"},
                   "to": {"type": "string", "description": "a date or time (default: now)"},
                   "group_by": {"type": "string", "enum": ["day", "model", "key", "user"]},
                   "all": {"type": "boolean", "description": "everyone's usage (admins)"}})
def usage():
    everyone = request.args.get("all", "").lower() in ("1", "true", "yes")
    if everyone and not g.user.get("is_admin"):
        raise Forbidden("only admins may see everyone's usage (all=true)")
    group_by = request.args.get("group_by", "user" if everyone else "day")
    allowed = metering.GROUPS if everyone else tuple(x for x in metering.GROUPS if x != "user")
    if group_by not in allowed:
        raise BadRequest(f"unknown group_by {group_by[:40]!r}: use one of {'|'.join(allowed)}")
    start, end = metering.period(request.args.get("from"), request.args.get("to"))
    with db.transaction() as conn:
        groups = metering.summary(conn, None if everyone else g.user["id"], start, end, group_by)
        month = metering.used_this_month(conn, g.user["id"])
    limits = g.user.get("plan_limits")
    monthly, spent = (limits.monthly_credits if limits else None), month.credits
    return jsonify(object="usage", **{"from": iso_time(start), "to": iso_time(end)}, group_by=group_by,
                   data=groups, totals=metering.totals(groups),
                   plan={"name": g.user.get("plan"), "limits": limits.stored() if limits else {}},
                   # The caller's own credits this month against their plan's; warned from 80%.
                   month={"since": iso_time(metering.month_start()), "credits": round(spent, 6),
                          "training_minutes": round(month.training_seconds / 60, 2),
                          "monthly_credits": monthly, "warning": bool(monthly and spent >= 0.8 * monthly)},
                   storage={"used_bytes": UserFiles(current_app.extensions["filestore"], g.user["id"]).used_bytes(),
                            "storage_bytes": limits.storage_bytes if limits else None})
