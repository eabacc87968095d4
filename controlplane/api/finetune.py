"""Helix's fine-tune routes on a session: the question/answer pairs for review, starting the
training after it, retrying the chunks that failed, adding documents, and cloning."""
from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from controlplane.accounts.auth import require_user
from controlplane.contract import helix_types as helix
from controlplane.contract.operations import JSON, documented
from controlplane.errors import BadRequest
from controlplane.finetune.text_input import DocumentsForm, ReviewPair
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
@documented("The question/answer pairs of a fine-tune, for review (Helix's ShareGPT shape, or ?format=pairs)",
            query={"format": {"type": "string", "enum": ["helix", "pairs"]}},
            responses={200: ([helix.Conversation], {"type": "array", "items": {"type": "object"}})})
def get_pairs(session_id: str, interaction_id: str):
    with db.transaction() as conn:
        return _pairs_answer(_service().get_pairs(conn, g.user, session_id, interaction_id))


@bp.put("/text/conversations/<interaction_id>")
@require_user
@documented("Replace the pairs while the fine-tune waits for review", body=[ReviewPair],
            body_types=(JSON,), query={"format": {"type": "string", "enum": ["helix", "pairs"]}},
            responses={200: ([helix.Conversation], {"type": "array", "items": {"type": "object"}})})
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
@documented("Train on the reviewed pairs", responses={200: helix.Session})
def start(session_id: str):
    with db.transaction() as conn:
        return _session(conn, _service().start(conn, g.user, session_id))


@bp.put("/text/retry")
@require_user
@documented("Run the fine-tune's failed stage again", responses={200: helix.Session})
def retry(session_id: str):
    with db.transaction() as conn:
        return _session(conn, _service().retry(conn, g.user, session_id))


@bp.put("/documents")
@require_user
@documented("Add documents to a fine-tune waiting for them", body=DocumentsForm, files=("files",),
            responses={200: helix.Session})
def add_documents(session_id: str):
    files = [f for f in request.files.getlist("files") if f.filename]
    if files:
        storage_quota.check_storage(current_app.extensions["filestore"])
    with db.transaction() as conn:
        return _session(conn, _service().add_documents(conn, g.user, session_id, read_request(DocumentsForm), files))


@bp.post("/clone/<interaction_id>/<mode>")
@require_user
@documented("Copy a session up to an interaction, to chat with its adapter or train again (mode: just_data,"
            " with_questions, all)", responses={201: helix.Session})
def clone(session_id: str, interaction_id: str, mode: str):
    with db.transaction() as conn:
        return _session(conn, _service().clone(conn, g.user, session_id, interaction_id, mode)), 201
