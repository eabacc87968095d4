"""Helix's fine-tune routes on a session: the question/answer pairs for review, starting the
training after it, retrying the chunks that failed, adding documents, and cloning."""
from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from controlplane.accounts.auth import require_user
from controlplane.errors import BadRequest
from controlplane.finetune.text_input import DocumentsForm
from controlplane.http.forms import read_request
from controlplane.sessions import store as sessions_store
from controlplane.sessions.views import session_view
from controlplane.storage import db
from controlplane.storage.rows import SessionWithInteractions
from controlplane.usage import storage_quota

bp = Blueprint("finetune", __name__, url_prefix="/api/v1/sessions/<session_id>/finetune")


def _service():
    return current_app.extensions["finetune_service"]


def _pairs_answer(pairs: list[dict]):
    """The pairs in Helix's ShareGPT shape, `[{"conversations": [{"from": "human", "value": question},
    {"from": "gpt", "value": answer}]}]`, or this platform's pair objects (with their fact, style
    and chunk) with `?format=pairs`."""
    shape = request.args.get("format", "helix")
    if shape == "pairs":
        return jsonify(pairs)
    if shape != "helix":
        raise BadRequest(f"unknown format {shape[:40]!r}: use helix (the default) or pairs")
    return jsonify([{"conversations": [{"from": "human", "value": p["question"]},
                                       {"from": "gpt", "value": p["answer"]}]} for p in pairs])


@bp.get("/text/conversations/<interaction_id>")
@require_user
def get_pairs(session_id: str, interaction_id: str):
    with db.transaction() as conn:
        return _pairs_answer(_service().get_pairs(conn, g.user, session_id, interaction_id))


@bp.put("/text/conversations/<interaction_id>")
@require_user
def put_pairs(session_id: str, interaction_id: str):
    """Replaces the pairs while the fine-tune waits for review: a JSON list, each item a pair
    object or Helix's conversation; answers the pairs saved, as GET does."""
    with db.transaction() as conn:
        pairs = _service().put_pairs(conn, g.user, session_id, interaction_id, request.get_json(silent=True))
    return _pairs_answer(pairs)


def _session(conn, changed: SessionWithInteractions):
    """The session as GET shows it, pairs included."""
    session, _ = changed
    return jsonify(session_view(*sessions_store.get_session_with_interactions(conn, session.id, g.user["id"])))


@bp.post("/start")
@require_user
def start(session_id: str):
    with db.transaction() as conn:
        return _session(conn, _service().start(conn, g.user, session_id))


@bp.put("/text/retry")
@require_user
def retry(session_id: str):
    with db.transaction() as conn:
        return _session(conn, _service().retry(conn, g.user, session_id))


@bp.put("/documents")
@require_user
def add_documents(session_id: str):
    files = [f for f in request.files.getlist("files") if f.filename]
    if files:
        storage_quota.check_storage(current_app.extensions["filestore"])
    with db.transaction() as conn:
        return _session(conn, _service().add_documents(conn, g.user, session_id, read_request(DocumentsForm), files))


@bp.post("/clone/<interaction_id>/<mode>")
@require_user
def clone(session_id: str, interaction_id: str, mode: str):
    with db.transaction() as conn:
        return _session(conn, _service().clone(conn, g.user, session_id, interaction_id, mode)), 201
