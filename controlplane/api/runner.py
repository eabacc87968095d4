"""Routes for runners, authenticated by runner token: registration, interaction updates and
output files (runners never hold the filestore's credentials).

Every route about a session acts for one runner, named in the X-Helix-Runner header (or, in an
update, its `runner` field), registered with the request's token and running the job of that
interaction (see runner_service.authorize)."""
from __future__ import annotations

from functools import wraps

from flask import Blueprint, Response, current_app, g, jsonify, request

from controlplane import metrics
from controlplane.accounts.auth import require_runner
from controlplane.contract.operations import BYTES, JSON, documented
from controlplane.errors import BadRequest, Conflict, NotFound, UpgradeRequired
from controlplane.fleet import decisions as scheduling_decisions
from controlplane.fleet import forgotten_adapters
from controlplane.fleet.dispatch import job_stage
from controlplane.http.messages import parsed
from controlplane.knowledge import store as knowledge_store
from controlplane.knowledge import ways
from controlplane.runners import reports as runner_service
from controlplane.sessions import store as sessions_store
from controlplane.sessions.views import interaction_view, iso_time
from controlplane.storage import db
from controlplane.storage.db import storable
from controlplane.storage.filestore import UserFiles, interaction_outputs, session_folder, user_path
from shared.runners import RUNNER_HEADER, runner_of_worker
from shared.wire import (WIRE_VERSION, WIRE_VERSION_HEADER, ChunkReport, DocumentReport, IndexedReport, IndexReport,
                         InteractionUpdate, MetricsReport, PreparedReport, Registration, RetrievalRequest)

bp = Blueprint("runner", __name__, url_prefix="/api/v1/runner")


@bp.before_request
def _runner_upload_limit():
    """Runners upload adapters and training checkpoints, far larger than a user's request."""
    request.max_content_length = current_app.config["HELIX"].max_runner_upload_bytes


def same_wire(route):
    """Refuses a runner that speaks another version of these routes' messages (shared/wire.py),
    once its token is known good, with what to upgrade: it would misread or be misread."""
    @wraps(route)
    def checked(*args, **kwargs):
        spoken = request.headers.get(WIRE_VERSION_HEADER, "")
        if spoken != str(WIRE_VERSION):
            side = "runner" if not spoken.isdigit() or int(spoken) < WIRE_VERSION else "control plane"
            raise UpgradeRequired(f"this runner speaks version {spoken[:20] or 'none'} of the runner API's"
                                  f" messages ({WIRE_VERSION_HEADER}) and this control plane speaks {WIRE_VERSION}:"
                                  f" upgrade the {side} so that both run the same release")
        return route(*args, **kwargs)
    return checked


def _message(model, what: str):
    """The request's JSON body as `model`; NUL (which models emit) stored as U+FFFD."""
    return parsed(model, storable(request.get_json(silent=True)), what)


def _max_name_bytes() -> int:
    return current_app.config["HELIX"].max_name_bytes


def _acting_runner(named: str = "") -> str:
    """The runner id this request acts for: its X-Helix-Runner header, else what the body named."""
    return request.headers.get(RUNNER_HEADER) or named


def _authorize(conn, session_id: str, interaction_id: str, named: str = "") -> dict:
    """The interaction, once the runner this request acts for may write it (else 400/403/404/409)."""
    return runner_service.authorize(conn, current_app.extensions["dispatcher"], g.runner_token["id"],
                                    _acting_runner(named), session_id, interaction_id)


@bp.post("/register")
@require_runner
@same_wire
@documented("A runner says it is here, what it serves and its state", body=Registration, auth="runner",
            body_types=(JSON,))
def register():
    registration = _message(Registration, "registration")
    with db.transaction() as conn:
        row = runner_service.register_runner(conn, current_app.config["HELIX"], g.runner_token["id"], registration)
        forget, through = forgotten_adapters.told(conn, row["id"], registration.forgotten_seen)
    return jsonify(id=row["id"], models=row["models"], first_seen=iso_time(row["first_seen"]),
                   forget=forget, forgotten_through=through)


@bp.post("/sessions/<session_id>/interactions/<interaction_id>")
@require_runner
@same_wire
@documented("A job's progress, streamed text or final result", body=InteractionUpdate, auth="runner",
            body_types=(JSON,))
def update_interaction(session_id: str, interaction_id: str):
    update = _message(InteractionUpdate, "update")
    named = update.runner
    redis = current_app.extensions["redis"]
    with db.transaction() as conn:
        interaction = _authorize(conn, session_id, interaction_id, named)
        view = runner_service.apply_update(conn, current_app.extensions["dispatcher"],
                                           current_app.extensions["filestore"], interaction, update,
                                           _acting_runner(named))
        # Under the interaction's row lock: two updates of one attempt never both count as its first.
        decision = scheduling_decisions.record(redis, interaction, job_stage(interaction), _acting_runner(named))
    if decision is not None:
        metrics.observe_scheduling(decision)
    if view["finished"]:
        metrics.count_finished(view["state"])
    return jsonify(view)


@bp.post("/sessions/<session_id>/interactions/<interaction_id>/files")
@require_runner
@same_wire
@documented("A result file of a job (an image, an adapter, a checkpoint)", auth="runner",
            body_types=("multipart/form-data",), files=("file",))
def upload_result(session_id: str, interaction_id: str):
    """A runner's output file, stored in the session owner's filestore under the session."""
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise BadRequest("send the file in the multipart field 'file'")
    name = user_path(upload.filename, max_name_bytes=_max_name_bytes(), allow_root=False)
    if "/" in name:
        raise BadRequest("file names must not contain '/'")
    with db.transaction() as conn:
        _authorize(conn, session_id, interaction_id)
        session = sessions_store.get_session_any_owner(conn, session_id)
        files = UserFiles(current_app.extensions["filestore"], session.owner)
        path = f"{interaction_outputs(session_id, interaction_id)}/{name}"
        files.write(path, upload.stream)
    return jsonify(path=path), 201


@bp.get("/sessions/<session_id>/files")
@require_runner
@same_wire
@documented("A session's input files, for its job", auth="runner", content=BYTES)
def download_input(session_id: str):
    """A file of the session (its inputs, say), for a runner running one of its jobs: only inside
    that session's folder."""
    path = user_path(request.args.get("path"), max_name_bytes=_max_name_bytes(), allow_root=False)
    runner_id = _acting_runner()
    with db.transaction() as conn:
        runner_service.check_runner(conn, g.runner_token["id"], runner_id)
        session = sessions_store.get_session_any_owner(conn, session_id)
        if session is None:
            raise NotFound("session not found")
        # Its own files, and the adapter it is served with (which may be another session's of
        # the same owner: a chat on a fine-tuned model through the OpenAI API).
        readable = [session_folder(session_id)] + ([session.lora_dir] if session.lora_dir else [])
        if not any(path.startswith(folder + "/") for folder in readable):
            raise BadRequest(f"runners may read only files under {session_folder(session_id)}/"
                             " and the session's adapter")
        dispatcher = current_app.extensions["dispatcher"]
        if not any(runner_of_worker(dispatcher.holder(i.id, job_stage(i))) == runner_id
                   for i in sessions_store.get_interactions(conn, session_id)
                   if i.creator == "system" and not i.finished):
            raise Conflict(f"runner {runner_id!r} is running none of this session's jobs")
    files = UserFiles(current_app.extensions["filestore"], session.owner)
    info = files.stat(path)
    if info.directory:
        raise BadRequest("path is a folder")
    return Response(files.open(path), mimetype="application/octet-stream",
                    headers={"Content-Length": str(info.size)}, direct_passthrough=True)


# -- text fine-tunes: what the runner reports as it prepares data and trains ------------------

def _finetune():
    return current_app.extensions["finetune_service"]


# The reports a data-preparation or training job makes: their message, and the service method that takes each.
_FINETUNE_REPORTS = {"document": (DocumentReport, "report_document"), "chunk": (ChunkReport, "report_chunk"),
                     "metrics": (MetricsReport, "report_metrics"), "index": (IndexReport, "report_index"),
                     "indexed": (IndexedReport, "report_indexed")}


@bp.post("/sessions/<session_id>/interactions/<interaction_id>/finetune/<report>")
@require_runner
@same_wire
@documented("A fine-tune's report: a document read, a chunk's pairs, chunks for the retrieval index, the"
            " index made whole, training metrics, or the end of data preparation (report: document, chunk,"
            " index, indexed, metrics, prepared)",
            body=(DocumentReport, ChunkReport, IndexReport, IndexedReport, MetricsReport, PreparedReport),
            auth="runner", body_types=(JSON,))
def finetune_report(session_id: str, interaction_id: str, report: str):
    """A document read, a chunk's pairs, training metrics, or (`prepared`) the end of data preparation."""
    if report != "prepared" and report not in _FINETUNE_REPORTS:
        raise NotFound(f"no fine-tune report {report[:40]!r}: use prepared, " + ", ".join(_FINETUNE_REPORTS))
    if report == "prepared":
        prepared = _message(PreparedReport, "prepared report") if request.content_length else PreparedReport()
        with db.transaction() as conn:
            _authorize(conn, session_id, interaction_id)
            return jsonify(interaction_view(_finetune().report_prepared(conn, session_id, interaction_id, prepared)))
    message = _message(_FINETUNE_REPORTS[report][0], f"{report} report")
    with db.transaction() as conn:
        _authorize(conn, session_id, interaction_id)
        getattr(_finetune(), _FINETUNE_REPORTS[report][1])(conn, session_id, interaction_id, message)
    return jsonify(ok=True)


@bp.get("/sessions/<session_id>/interactions/<interaction_id>/finetune/pairs")
@require_runner
@same_wire
@documented("The reviewed pairs to train on", auth="runner")
def training_pairs(session_id: str, interaction_id: str):
    with db.transaction() as conn:
        _authorize(conn, session_id, interaction_id)
        return jsonify(_finetune().pairs_for_training(conn, session_id, interaction_id))


@bp.post("/sessions/<session_id>/interactions/<interaction_id>/retrieve")
@require_runner
@same_wire
@documented("The best chunks of the index the interaction's session learns from, for each question",
            body=RetrievalRequest, auth="runner", body_types=(JSON,))
def retrieve(session_id: str, interaction_id: str):
    """Searched for the session's owner in the index its config names, never one the runner names."""
    asked = _message(RetrievalRequest, "retrieval request")
    with db.transaction() as conn:
        _authorize(conn, session_id, interaction_id)
        session = sessions_store.get_session_any_owner(conn, session_id)
        index = ways.index_of(session)
        if not index:
            raise BadRequest("this session has no documents indexed for retrieval")
        results = [[{"file": f.file, "chunk": f.index, "text": f.text, "score": round(f.score, 6),
                     "similarity": round(f.similarity, 4)}
                    for f in knowledge_store.search(conn, index, session.owner, q.text, q.embedding, asked.limit)]
                   for q in asked.questions]
    return jsonify(results=results)
