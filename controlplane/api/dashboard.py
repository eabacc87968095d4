"""GET /api/v1/dashboard: the fleet at a glance, for admins (users with is_admin; others get 403).

Queues with their length, oldest wait and jobs held back by fair share, runners with their reported state (alive or gone),
the latest scheduling decisions (which runner took which interaction, after how long queued), and the plans with who is
on them."""
from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from controlplane.accounts.auth import require_user
from controlplane.contract.operations import documented
from controlplane.errors import BadRequest, Forbidden
from controlplane.fleet import decisions as scheduling_decisions
from controlplane.fleet import fair_share_store
from controlplane.fleet import overview as fleet
from controlplane.fleet import store as fleet_store
from controlplane.sessions.views import iso_time
from controlplane.storage import db
from controlplane.usage import plans

bp = Blueprint("dashboard", __name__, url_prefix="/api/v1/dashboard")
MAX_DECISIONS = scheduling_decisions.KEPT


def _runner_view(row: fleet_store.RunnerRow) -> dict:
    return {"id": row.id, "status": "gone" if row.gone else "alive", "token": row.token,
            "token_revoked": row.token_revoked, "models": row.models, "info": row.info,
            "state": row.state, "first_seen": iso_time(row.first_seen),
            "last_seen": iso_time(row.last_seen), "seconds_since_seen": row.seconds_since_seen}


@bp.get("")
@require_user
@documented("The fleet for admins: runners, queues, plans and recent scheduling decisions",
            query={"decisions": {"type": "integer", "minimum": 0, "description": "how many recent decisions"}})
def dashboard():
    if not g.user.get("is_admin"):
        raise Forbidden("the dashboard is for admins (`helix users create EMAIL --admin`)")
    raw = request.args.get("decisions", "50")
    if not raw.isdigit() or not 0 <= int(raw) <= MAX_DECISIONS:
        raise BadRequest(f"decisions must be a whole number from 0 to {MAX_DECISIONS}")
    config = current_app.config["HELIX"]
    with db.transaction() as conn:
        runners = fleet_store.runners_with_tokens(conn, config.runner_gone_seconds)
        held = fair_share_store.held_by_queue(conn)
        plan_rows = plans.list_plans(conn)
    redis = current_app.extensions["redis"]
    return jsonify(queues=fleet.with_held(fleet.queues(redis), held), runners=[_runner_view(r) for r in runners],
                   runner_gone_seconds=config.runner_gone_seconds,
                   decisions=scheduling_decisions.recent(redis, int(raw)) if int(raw) else [],
                   plans=[{**p, "limits": p["limits"].stored(), "updated": iso_time(p["updated"])} for p in plan_rows])
