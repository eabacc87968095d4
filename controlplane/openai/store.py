"""The OpenAI API's own rows: uploaded files (`openai_files`), and the sessions it lists as
fine-tuned models and fine-tuning jobs."""
from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import class_row

from controlplane.storage.rows import SessionRow


def insert_file(conn: psycopg.Connection, *, file_id: str, owner: str, filename: str, purpose: str, size: int,
                examples: int, path: str) -> dict[str, Any]:
    return conn.execute(
        "INSERT INTO openai_files (id, owner, filename, purpose, bytes, examples, path)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (file_id, owner, filename, purpose, size, examples, path)).fetchone()


def get_file(conn: psycopg.Connection, file_id: str, owner: str) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM openai_files WHERE id = %s AND owner = %s", (file_id, owner)).fetchone()


def list_files(conn: psycopg.Connection, owner: str, purpose: str, after: dict[str, Any] | None, limit: int,
               newest_first: bool) -> list[dict[str, Any]]:
    """One page of the owner's files (of `purpose`, if given), after the file `after`."""
    sign, direction = ("<", "DESC") if newest_first else (">", "ASC")
    where, params = ["owner = %s"], [owner]
    if purpose:
        where.append("purpose = %s")
        params.append(purpose)
    if after:
        where.append(f"(created, id) {sign} (%s, %s)")
        params += [after["created"], after["id"]]
    return conn.execute(f"SELECT * FROM openai_files WHERE {' AND '.join(where)}"
                        f" ORDER BY created {direction}, id {direction} LIMIT %s", (*params, limit)).fetchall()


def delete_file(conn: psycopg.Connection, file_id: str) -> None:
    conn.execute("DELETE FROM openai_files WHERE id = %s", (file_id,))


def fine_tuned_sessions(conn: psycopg.Connection, owner: str) -> list[SessionRow]:
    """The owner's fine-tuned text sessions that chat, with an adapter or an index of their
    documents: each is a model to call (a /v1 chat on one of them is not another)."""
    with conn.cursor(row_factory=class_row(SessionRow)) as cur:
        return cur.execute("SELECT * FROM sessions s WHERE owner = %s AND (lora_dir <> '' OR config ? 'knowledge')"
                           " AND type = 'text' AND mode = 'inference' AND EXISTS (SELECT 1 FROM interactions i"
                           " WHERE i.session_id = s.id AND i.mode = 'finetune') ORDER BY created", (owner,)).fetchall()


def job_sessions(conn: psycopg.Connection, owner: str, after: SessionRow | None, limit: int) -> list[SessionRow]:
    """One page of the owner's fine-tuning jobs (sessions made by the jobs API), newest first,
    after the job session `after`."""
    cursor, params = "", [owner]
    if after:
        cursor, params = " AND (created, id) < (%s, %s)", [owner, after.created, after.id]
    with conn.cursor(row_factory=class_row(SessionRow)) as cur:
        return cur.execute(f"SELECT * FROM sessions WHERE owner = %s AND config ? 'openai_job'{cursor}"
                           " ORDER BY created DESC, id DESC LIMIT %s", (*params, limit)).fetchall()
