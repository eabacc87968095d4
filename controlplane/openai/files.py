"""Files of the OpenAI-compatible API (`/v1/files`): fine-tuning data, checked whole when uploaded
(a refused upload stores nothing), kept in the uploader's filestore under `openai-files/` with a
row in `openai_files` that gives its OpenAI id and shape. Another user's file does not exist."""
from __future__ import annotations

import enum
import io
import uuid
from functools import partial
from typing import Any

import psycopg

from controlplane.config import Config
from controlplane.errors import BadRequest, NotFound
from controlplane.finetune import examples as finetune_examples
from controlplane.http.fields import ensure_utf8
from controlplane.http.forms import Form, read_form
from controlplane.openai import store as openai_store
from controlplane.storage import db
from controlplane.storage.filestore import Filestore, UserFiles

PURPOSE = "fine-tune"
FOLDER = "openai-files"
MAX_FILENAME_CHARS = 255


class FilePurpose(enum.Enum):
    """What an uploaded file is for: this server keeps fine-tuning files only."""

    FINE_TUNE = PURPOSE


class FileUpload(Form):
    """POST /v1/files: its form fields beside the multipart field `file` (the JSONL examples)."""

    purpose: FilePurpose


def file_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": int(row["created"].timestamp()),
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "status_details": None,
            "expires_at": None}


def _limits(config: Config) -> finetune_examples.Limits:
    return finetune_examples.Limits(config.finetune_file_max_bytes, config.finetune_file_max_examples,
                                    config.max_input_chars)


class OpenAIFiles:
    def __init__(self, config: Config, filestore: Filestore):
        self.config, self.filestore = config, filestore

    def create(self, conn: psycopg.Connection, user: dict[str, Any], upload: Any,
               fields: dict[str, Any]) -> dict[str, Any]:
        """`upload`: the multipart field `file`; `fields`: the body's other fields (FileUpload)."""
        if upload is None:
            raise BadRequest("send a multipart/form-data body: the JSONL file as the multipart field 'file',"
                             f" and purpose={PURPOSE}")
        form = read_form(FileUpload, fields)
        filename = ensure_utf8((upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip(), "filename")
        if not filename or "\x00" in filename or len(filename) > MAX_FILENAME_CHARS:
            raise BadRequest(f"the file needs a name of 1 to {MAX_FILENAME_CHARS} characters")
        data = upload.stream.read(self.config.finetune_file_max_bytes + 1)
        examples = finetune_examples.parse(data, _limits(self.config))
        file_id = f"file-{uuid.uuid4().hex}"
        files = UserFiles(self.filestore, user["id"])
        path = f"{FOLDER}/{file_id}.jsonl"
        db.after_rollback(conn, partial(files.remove, path))  # nothing half-written
        files.write(path, io.BytesIO(data))
        return openai_store.insert_file(conn, file_id=file_id, owner=user["id"], filename=filename,
                                        purpose=form.purpose.value, size=len(data), examples=len(examples), path=path)

    def get(self, conn: psycopg.Connection, user: dict[str, Any], file_id: str, what: str = "file") -> dict[str, Any]:
        row = openai_store.get_file(conn, file_id, user["id"])
        if row is None:
            raise NotFound(f"no {what} with id {file_id[:100]!r}: GET /v1/files lists yours")
        return row

    def list(self, conn: psycopg.Connection, user: dict[str, Any], purpose: str, after: str, limit: int,
             order: str) -> list[dict[str, Any]]:
        """One page, newest first (or oldest, `order=asc`), after the file `after`."""
        cursor = self.get(conn, user, after) if after else None
        return openai_store.list_files(conn, user["id"], purpose, cursor, limit, newest_first=order == "desc")

    def delete(self, conn: psycopg.Connection, user: dict[str, Any], file_id: str) -> dict[str, Any]:
        """The row and the content; a job made from the file keeps its pairs (they were copied)."""
        row = self.get(conn, user, file_id)
        openai_store.delete_file(conn, file_id)
        # One removed through the filestore routes already is no error.
        db.after_commit(conn, partial(UserFiles(self.filestore, user["id"]).remove, row["path"]))
        return {"id": file_id, "object": "file", "deleted": True}

    def content(self, user: dict[str, Any], row: dict[str, Any]) -> bytes:
        files = UserFiles(self.filestore, user["id"])
        try:
            with files.open(row["path"]) as f:
                return f.read()
        except NotFound:
            raise NotFound(f"the content of {row['id']} is gone from your filestore ({row['path']})") from None

    def examples(self, conn: psycopg.Connection, user: dict[str, Any], file_id: str,
                 what: str) -> list[list[finetune_examples.Pair]]:
        """A file's examples for a job, checked again (the limits may have changed since)."""
        row = self.get(conn, user, file_id, what)
        try:
            return finetune_examples.parse(self.content(user, row), _limits(self.config))
        except BadRequest as err:
            raise BadRequest(f"{what} {file_id}: {err.message}") from None
