"""The Helix sessions routes, and the session's live events stream."""
from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from controlplane import metrics
from controlplane.accounts.auth import require_user
from controlplane.contract import helix_types as helix
from controlplane.contract.operations import EVENTS, IMAGE_MODEL, TEXT_MODEL, documented
from controlplane.errors import BadRequest, NotFound
from controlplane.finetune.image_input import ImageFinetuneForm
from controlplane.finetune.text_input import TextFinetuneForm
from controlplane.fleet import scheduling
from controlplane.http import event_stream
from controlplane.http.fields import optional_int, text_field
from controlplane.http.forms import read_form, read_request, request_fields
from controlplane.sessions import events, sharing
from controlplane.sessions import store as sessions_store
from controlplane.sessions.input import ContinueChat, NewSession, SessionKind, SessionMeta, SessionSettings
from controlplane.sessions.views import helix_config, session_summary, session_view, summary_of
from controlplane.storage import db
from controlplane.storage.rows import SessionWithInteractions
from controlplane.usage import admission, storage_quota
from controlplane.usage.admission import Work
from shared.types import SessionMode, SessionType

bp = Blueprint("sessions", __name__, url_prefix="/api/v1/sessions")
# Where a new session leads (the OpenAPI document's links): create, read, continue, stop, delete.
SESSION_LINKS = {"GetSession": "sessions_get_session", "GetSummary": "sessions_get_session_summary",
                 "ContinueSession": "sessions_continue_session", "CancelSession": "sessions_cancel_session",
                 "RestartSession": "sessions_restart_session", "RenameSession": "sessions_rename_session",
                 "ShareSession": "sessions_update_session_config", "SessionEvents": "sessions_session_events",
                 "DeleteSession": "sessions_delete_session"}


def _service():
    return current_app.extensions["session_service"]


def _session_or_404(conn, session_id: str) -> SessionWithInteractions:
    found = sessions_store.get_session_with_interactions(conn, session_id, g.user["id"])
    if found is None:
        raise NotFound("session not found")
    return found


@bp.post("")
@require_user
@documented("Create a session: a chat, an image, or a fine-tune of text documents or captioned images",
            body=(NewSession, TextFinetuneForm, ImageFinetuneForm), files=("files",), responses={201: helix.Session},
            links={name: (target, {"session_id": "$response.body#/id"}) for name, target in SESSION_LINKS.items()},
            examples={"chat": {"mode": "inference", "type": "text", "model_name": TEXT_MODEL,
                               "input": "Write a haiku about the sea.", "max_tokens": 32},
                      "image": {"mode": "inference", "type": "image", "model_name": IMAGE_MODEL,
                                "input": "a red lighthouse at dusk", "seed": 7}},
            description="The Helix form: mode=inference|finetune and type=text|image, then the prompt (`input`)"
                        " or the files to learn from. Its work is queued; poll the session or read its events.")
def create_session():
    body = request_fields()
    files = [f for f in request.files.getlist("files") if f.filename]
    kind = read_form(SessionKind, body)
    admission.admit(Work.FINETUNE if kind.mode == SessionMode.FINETUNE else
                    Work.IMAGE if kind.type == SessionType.IMAGE else Work.TEXT, body)
    if files:
        storage_quota.check_storage(current_app.extensions["filestore"])
    with db.transaction() as conn:
        if kind.mode == SessionMode.FINETUNE:
            image = kind.type == SessionType.IMAGE
            form = read_request(ImageFinetuneForm if image else TextFinetuneForm, body)
            model = _service().model_for(conn, form.model_name, kind.mode, kind.type)
            fine_tuning = current_app.extensions["image_finetune_service" if image else "finetune_service"]
            created = fine_tuning.create(conn, g.user, form, files, model)
        else:
            created = _service().create(conn, g.user, read_request(NewSession, body), files)
    return jsonify(session_view(*created)), 201


@bp.get("")
@require_user
@documented("The caller's sessions, newest first", responses={200: helix.SessionsList},
            query={"offset": {"type": "integer", "minimum": 0, "maximum": 10**9},
                   "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                   "q": {"type": "string", "description": "words in the session's name"}})
def list_sessions():
    offset = optional_int(request.args, "offset", 0, 10**9) or 0
    limit = optional_int(request.args, "limit", 1, 1000) or 50
    search = text_field(request.args, "q", 200).strip()
    with db.transaction() as conn:
        ends, total = sessions_store.list_session_ends(conn, g.user["id"], offset, limit, search)
    # Each item is Helix's SessionSummary with the session's own fields beside it; `counter` is
    # Helix's spelling of the total, `total_count` the plainer one.
    return jsonify(sessions=[{**session_view(row, []), **summary_of(row, user, system)} for row, user, system in ends],
                   offset=offset, limit=limit, total_count=total, counter={"count": total})


def _full_view(conn, session_id: str) -> dict:
    """The session as GET shows it: pairs listed, and a queued interaction's place and reason;
    to its owner, and read only to anyone signed in where it is shared, and to admins."""
    session, interactions = sharing.readable_session(conn, g.user, session_id)
    return scheduling.annotate(conn, current_app.extensions["redis"], current_app.config["HELIX"],
                               session_view(session, interactions), session, interactions)


@bp.get("/<session_id:session_id>")
@require_user
@documented("One session with its interactions: the status poll", responses={200: helix.Session})
def get_session(session_id: str):
    """The status poll: answered from this process's copy while no change was announced."""
    cache = current_app.extensions["session_cache"]
    kept = cache.get(session_id, g.user["id"])
    if kept is not None:
        metrics.POLL_FROM_COPY.inc()
        return current_app.response_class(kept, mimetype="application/json")
    metrics.POLL_FROM_DATABASE.inc()
    mark = cache.mark()
    with db.read() as conn:
        view = _full_view(conn, session_id)
    # A reply in progress shows its text as streamed so far, not as last stored.
    streaming = any(events.streams_text(i) for i in view["interactions"])
    if streaming:
        events.with_streamed_text(current_app.extensions["redis"], view)
    response = jsonify(view)
    # Kept for the owner alone (a reader's right to it ends when the owner stops sharing), and
    # not while it changes with no write to announce it: a queue position, a reply's text.
    if view["owner"] == g.user["id"] and not scheduling.waits_in_queue(view) and not streaming:
        cache.put(session_id, g.user["id"], response.get_data(), mark)
    return response


@bp.get("/<session_id>/summary")
@require_user
@documented("One session's summary, as the session list shows it", responses={200: helix.SessionSummary})
def get_session_summary(session_id: str):
    """Helix's SessionSummary of one session, as the session list shows each."""
    with db.read() as conn:
        return jsonify(session_summary(*sharing.readable_session(conn, g.user, session_id)))


@bp.put("/<session_id>/meta")
@require_user
@documented("Rename a session", body=SessionMeta, responses={200: helix.Session},
            examples={"rename": {"name": "Sea poems"}})
def rename_session(session_id: str):
    """Helix's rename: a SessionMetaUpdate; answers the session."""
    meta = read_request(SessionMeta)
    if meta.id and meta.id != session_id:
        raise BadRequest(f"'id' must be this session's, {session_id}, or left out")
    if (meta.owner and meta.owner != g.user["id"]) or meta.owner_type not in ("", "user"):
        raise BadRequest("'owner' and 'owner_type' must be yours (a session cannot be given away), or left out")
    with db.transaction() as conn:
        if sessions_store.rename_session(conn, session_id, g.user["id"], meta.name.strip()) is None:
            raise NotFound("session not found")
        return jsonify(session_view(*_session_or_404(conn, session_id)))


@bp.put("/<session_id>/config")
@require_user
@documented("Share a session, or set its avatar and priority", body=SessionSettings,
            responses={200: helix.SessionMetadata})
def update_session_config(session_id: str):
    """Helix's session settings (SessionMetadata): its owner shares it, or sets its avatar and
    priority (kept and shown; priority changes no one's place in the queues). Answers them all."""
    changes = read_request(SessionSettings).changes()
    with db.transaction() as conn:
        row = sessions_store.update_session_config(conn, session_id, g.user["id"], changes)
    if row is None:
        raise NotFound("session not found")
    return jsonify(helix_config(row))


@bp.post("/<session_id>/cancel")
@require_user
@documented("Stop the session's queued or running work", responses={200: helix.Session})
def cancel_session(session_id: str):
    """Stops queued or running work; the interaction ends with state error, status cancelled."""
    with db.transaction() as conn:
        _service().cancel(conn, g.user, session_id)
    with db.transaction() as conn:  # once its work is queued or stopped: the view tells where it stands
        return jsonify(_full_view(conn, session_id))


@bp.put("/<session_id>/restart")
@require_user
@documented("Run the session's last interaction again", responses={200: helix.Session})
def restart_session(session_id: str):
    """Runs the last interaction again (one still queued or running is left as it is)."""
    admission.admit(None)
    with db.transaction() as conn:
        _service().restart(conn, g.user, session_id)
    with db.transaction() as conn:  # once its work is queued or stopped: the view tells where it stands
        return jsonify(_full_view(conn, session_id))


@bp.put("/<session_id:session_id>")
@require_user
@documented("Continue a chat or image session with a new prompt", body=ContinueChat,
            responses={200: helix.Session}, examples={"next prompt": {"input": "And one about rivers."}})
def continue_session(session_id: str):
    body = request_fields()
    admission.admit(Work.TEXT, body)
    with db.transaction() as conn:
        continued = _service().continue_chat(conn, g.user, session_id, read_request(ContinueChat, body))
    return jsonify(session_view(*continued))


@bp.delete("/<session_id:session_id>")
@require_user
@documented("Delete a session, its files and its adapter", responses={200: helix.Session})
def delete_session(session_id: str):
    with db.transaction() as conn:
        session = _service().delete(conn, g.user, session_id)
    return jsonify(session_view(session, []))


@bp.get("/<session_id>/events")
@require_user
@documented("The session's changes as server-sent events, until its work ends", content=EVENTS)
def session_events(session_id: str):
    owner = g.user["id"]
    with db.read() as conn:
        _session_or_404(conn, session_id)
    app = current_app._get_current_object()

    def read_session() -> dict | None:
        with app.app_context(), db.read() as conn:
            found = sessions_store.get_session_with_interactions(conn, session_id, owner)
        return session_view(*found) if found else None

    release = app.extensions["event_streams"].acquire(owner, session_id, g.user["plan_limits"].event_streams)
    return event_stream.response(events.stream(app.extensions["subscriptions"], session_id, read_session), release)
