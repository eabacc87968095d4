"""The OpenAI-compatible file and fine-tuning routes (`/v1/files`, `/v1/fine_tuning/jobs`); errors
leave in OpenAI's shape through the `/v1` handler of controlplane.api.openai."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from controlplane.accounts.auth import require_user
from controlplane.contract.operations import JSON, documented
from controlplane.errors import BadRequest
from controlplane.openai.files import FileUpload, file_view
from controlplane.openai.job_input import FineTuningJobBody
from controlplane.storage import db
from controlplane.usage import admission, storage_quota
from controlplane.usage.admission import Work

bp = Blueprint("openai_finetuning", __name__, url_prefix="/v1")


def _files():
    return current_app.extensions["openai_files"]


def _jobs():
    return current_app.extensions["openai_finetuning"]


def _limit(default: int, high: int) -> int:
    raw = request.args.get("limit", "")
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise BadRequest(f"'limit' must be a whole number from 1 to {high}")
    return int(raw)


def _page(items: list[dict[str, Any]], limit: int, **extra: Any):
    """OpenAI's cursor page: one more item than asked was read to know whether more follow."""
    data = items[:limit]
    return jsonify(object="list", data=data, has_more=len(items) > limit, **extra)


@bp.post("/files")
@require_user
@documented("Upload a JSONL file of training examples (OpenAI's API)", body=FileUpload,
            body_types=("multipart/form-data",), files=("file",), errors="openai")
def upload_file():
    storage_quota.check_storage(current_app.extensions["filestore"])
    with db.transaction() as conn:
        row = _files().create(conn, g.user, request.files.get("file"), request.form.to_dict())
    return jsonify(file_view(row))


@bp.get("/files")
@require_user
@documented("The caller's files (OpenAI's API)", errors="openai",
            query={"purpose": {"type": "string"}, "after": {"type": "string"},
                   "limit": {"type": "integer", "minimum": 1, "maximum": 10_000},
                   "order": {"type": "string", "enum": ["asc", "desc"]}})
def list_files():
    limit = _limit(10_000, 10_000)
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("'order' must be asc or desc")
    with db.transaction() as conn:
        rows = _files().list(conn, g.user, request.args.get("purpose", ""), request.args.get("after", ""),
                             limit + 1, order)
    data = [file_view(r) for r in rows]
    return _page(data, limit, first_id=data[0]["id"] if data else None,
                 last_id=data[:limit][-1]["id"] if data else None)


@bp.get("/files/<file_id>")
@require_user
@documented("One file", errors="openai")
def get_file(file_id: str):
    with db.transaction() as conn:
        return jsonify(file_view(_files().get(conn, g.user, file_id)))


@bp.delete("/files/<file_id>")
@require_user
@documented("Delete a file", errors="openai")
def delete_file(file_id: str):
    with db.transaction() as conn:
        return jsonify(_files().delete(conn, g.user, file_id))


@bp.get("/files/<file_id>/content")
@require_user
@documented("A file's content (JSONL)", content="application/jsonl", errors="openai")
def file_content(file_id: str):
    with db.transaction() as conn:
        row = _files().get(conn, g.user, file_id)
    return Response(_files().content(g.user, row), mimetype="application/jsonl",
                    headers={"Content-Disposition": f'attachment; filename="{row["id"]}.jsonl"'})


@bp.post("/fine_tuning/jobs")
@require_user
@documented("Start a fine-tuning job (OpenAI's API)", body=FineTuningJobBody, body_types=(JSON,), errors="openai")
def create_job():
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("the body must be JSON (Content-Type: application/json)")
    admission.admit(Work.FINETUNE, body)
    with db.transaction() as conn:
        return jsonify(_jobs().create(conn, g.user, body))


@bp.get("/fine_tuning/jobs")
@require_user
@documented("The caller's fine-tuning jobs", errors="openai",
            query={"after": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}})
def list_jobs():
    limit = _limit(20, 100)
    with db.transaction() as conn:
        return _page(_jobs().list(conn, g.user, request.args.get("after", ""), limit + 1), limit)


@bp.get("/fine_tuning/jobs/<job_id>")
@require_user
@documented("One fine-tuning job: its status, trained tokens and result", errors="openai")
def get_job(job_id: str):
    with db.transaction() as conn:
        return jsonify(_jobs().get(conn, g.user, job_id))


def _after(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    after = request.args.get("after", "")
    if not after:
        return items
    ids = [i["id"] for i in items]
    if after not in ids:
        raise BadRequest(f"'after' must be the id of an item of this list, got {after[:100]!r}")
    return items[ids.index(after) + 1:]


@bp.get("/fine_tuning/jobs/<job_id>/events")
@require_user
@documented("A job's events: stages, progress and training loss", errors="openai",
            query={"after": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}})
def job_events(job_id: str):
    limit = _limit(20, 10_000)
    with db.transaction() as conn:
        return _page(_after(_jobs().events(conn, g.user, job_id)), limit)


@bp.get("/fine_tuning/jobs/<job_id>/checkpoints")
@require_user
@documented("A job's checkpoints", errors="openai",
            query={"after": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}})
def job_checkpoints(job_id: str):
    limit = _limit(10, 100)
    with db.transaction() as conn:
        items = _after(_jobs().checkpoints(conn, g.user, job_id))
    return _page(items, limit, first_id=items[0]["id"] if items else None,
                 last_id=items[:limit][-1]["id"] if items else None)


@bp.post("/fine_tuning/jobs/<job_id>/cancel")
@require_user
@documented("Cancel a fine-tuning job", errors="openai")
def cancel_job(job_id: str):
    with db.transaction() as conn:
        return jsonify(_jobs().cancel(conn, g.user, job_id))
