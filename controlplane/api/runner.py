"""Routes for runners, authenticated by runner token: registration and interaction updates."""
from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from controlplane import db, runner_service
from controlplane.auth import require_runner
from controlplane.views import iso_time

bp = Blueprint("runner", __name__, url_prefix="/api/v1/runner")


@bp.post("/register")
@require_runner
def register():
    with db.transaction() as conn:
        row = runner_service.register_runner(conn, g.runner_token["id"], request.get_json(silent=True) or {})
    return jsonify(id=row["id"], models=row["models"], first_seen=iso_time(row["first_seen"]))


@bp.post("/sessions/<session_id>/interactions/<interaction_id>")
@require_runner
def update_interaction(session_id: str, interaction_id: str):
    with db.transaction() as conn:
        view = runner_service.apply_update(conn, current_app.extensions["redis"], session_id,
                                           interaction_id, request.get_json(silent=True))
    return jsonify(view)
