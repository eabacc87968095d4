"""SQL for sessions and their interactions. Every read is scoped by owner: another user's
session simply does not exist for the caller."""
from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from controlplane.storage.rows import INTERACTION_FIELDS, SessionRow, InteractionRow
from shared.types import Creator, InteractionState

INTERACTION_COLUMNS = ", ".join(INTERACTION_FIELDS)

# A fine-tune interaction's question/answer pairs, listed with it (the Helix reference promises
# "all of the generated QA pairs" in the session's GET response).
_QA_PAIRS = (
    "CASE WHEN mode = 'finetune' AND creator = 'system' THEN coalesce((SELECT json_agg(p ORDER BY p.seq)"
    " FROM (SELECT id, seq, document, chunk_index, fact, style, question, answer FROM qa_pairs"
    " WHERE interaction_id = interactions.id) p), '[]'::json) END AS qa_pairs"
)


def new_id() -> str:
    return str(uuid.uuid4())


def one_session(conn: psycopg.Connection, query: str, params: tuple | list = ()) -> SessionRow | None:
    with conn.cursor(row_factory=class_row(SessionRow)) as cur:
        return cur.execute(query, params).fetchone()


def one_interaction(conn: psycopg.Connection, query: str, params: tuple | list = ()) -> InteractionRow | None:
    """Runs a query that selects or returns INTERACTION_COLUMNS of at most one interaction."""
    with conn.cursor(row_factory=class_row(InteractionRow)) as cur:
        return cur.execute(query, params).fetchone()


def insert_session(conn: psycopg.Connection, *, owner: str, mode: str, type: str, model_name: str,
                   name: str = "", config: dict | None = None, parent_session: str = "",
                   lora_dir: str = "", session_id: str | None = None) -> SessionRow:
    return one_session(
        conn, "INSERT INTO sessions (id, name, mode, type, model_name, owner, config, parent_session, lora_dir)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (session_id or new_id(), name, mode, type, model_name, owner, Jsonb(config or {}),
         parent_session, lora_dir))


def insert_interaction(conn: psycopg.Connection, *, session_id: str, creator: Creator, mode: str,
                       message: str = "", state: InteractionState, files: list[str] | None = None,
                       metadata: dict | None = None, status: str = "",
                       data_prep_stage: str = "", lora_dir: str = "") -> InteractionRow:
    """`scheduled` stays empty until a runner's first report: it is when a runner took the work."""
    finished = state in (InteractionState.COMPLETE, InteractionState.ERROR)
    return one_interaction(
        conn, f"INSERT INTO interactions (id, session_id, seq, creator, mode, message, state, files,"
        f" metadata, finished, completed, progress, status, data_prep_stage, lora_dir)"
        f" VALUES (%s, %s, (SELECT coalesce(max(seq), 0) + 1 FROM interactions WHERE session_id = %s),"
        f" %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END, %s, %s, %s, %s)"
        f" RETURNING {INTERACTION_COLUMNS}",
        (new_id(), session_id, session_id, creator.value, mode, message, state.value,
         Jsonb(files or []), Jsonb(metadata or {}), finished, finished,
         100 if finished else 0, status, data_prep_stage, lora_dir))


def get_session(conn: psycopg.Connection, session_id: str, owner: str, *,
                for_update: bool = False) -> SessionRow | None:
    lock = " FOR UPDATE" if for_update else ""
    return one_session(conn, f"SELECT * FROM sessions WHERE id = %s AND owner = %s{lock}", (session_id, owner))


def get_session_any_owner(conn: psycopg.Connection, session_id: str) -> SessionRow | None:
    """For runner routes only: a runner works for every user, a user only for themselves."""
    return one_session(conn, "SELECT * FROM sessions WHERE id = %s", (session_id,))


def get_interactions(conn: psycopg.Connection, session_id: str) -> list[InteractionRow]:
    with conn.cursor(row_factory=class_row(InteractionRow)) as cur:
        return cur.execute(f"SELECT {INTERACTION_COLUMNS} FROM interactions WHERE session_id = %s ORDER BY seq",
                           (session_id,)).fetchall()


def get_session_with_interactions(conn: psycopg.Connection, session_id: str,
                                  owner: str | None) -> tuple[SessionRow, list[InteractionRow]] | None:
    """The session with its interactions (and a fine-tune's pairs), in one round trip on indexed
    lookups: what the session's JSON shows. `owner` None: whoever owns it (see sessions/sharing.py)."""
    mine = " AND s.owner = %s" if owner is not None else ""
    row = conn.execute(
        f"SELECT s.*, coalesce((SELECT json_agg(i ORDER BY i.seq) FROM"
        f" (SELECT {INTERACTION_COLUMNS}, {_QA_PAIRS} FROM interactions WHERE session_id = s.id) i),"
        f" '[]'::json) AS interactions FROM sessions s WHERE s.id = %s{mine}",
        (session_id, owner) if owner is not None else (session_id,),
    ).fetchone()
    if row is None:
        return None
    interactions = row.pop("interactions")
    return SessionRow(**row), [InteractionRow.from_json(i) for i in interactions]


def _owned_matching(owner: str, search: str) -> tuple[str, list[str]]:
    """The WHERE clause of the owner's sessions whose name or id holds `search` (any case)."""
    where, params = "owner = %s", [owner]
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where += " AND (name ILIKE %s OR id ILIKE %s)"
        params += [pattern, pattern]
    return where, params


def list_sessions(conn: psycopg.Connection, owner: str, offset: int, limit: int,
                  search: str = "") -> tuple[list[SessionRow], int]:
    """The owner's sessions, newest first; `search` keeps those whose name or id holds it (any case)."""
    where, params = _owned_matching(owner, search)
    with conn.cursor(row_factory=class_row(SessionRow)) as cur:
        rows = cur.execute(f"SELECT * FROM sessions WHERE {where} ORDER BY created DESC, id LIMIT %s OFFSET %s",
                           (*params, limit, offset)).fetchall()
    total = conn.execute(f"SELECT count(*) AS n FROM sessions WHERE {where}", params).fetchone()["n"]
    return rows, total


SessionEnds = tuple[SessionRow, InteractionRow | None, InteractionRow | None]


def _one_turn(creator: str, order: str) -> str:
    return (f"(SELECT row_to_json(i) FROM (SELECT {INTERACTION_COLUMNS} FROM interactions"
            f" WHERE session_id = s.id AND creator = '{creator}' ORDER BY seq {order} LIMIT 1) i)")


def list_session_ends(conn: psycopg.Connection, owner: str, offset: int, limit: int,
                      search: str = "") -> tuple[list[SessionEnds], int]:
    """list_sessions, each session with its first user turn and its last system turn (what
    Helix's session summaries are made of), in one query."""
    where, params = _owned_matching(owner, search)
    rows = conn.execute(
        f"SELECT s.*, {_one_turn('user', 'ASC')} AS first_user, {_one_turn('system', 'DESC')} AS last_system"
        f" FROM sessions s WHERE {where} ORDER BY created DESC, id LIMIT %s OFFSET %s",
        (*params, limit, offset)).fetchall()
    total = conn.execute(f"SELECT count(*) AS n FROM sessions WHERE {where}", params).fetchone()["n"]
    ends = []
    for row in rows:
        first_user, last_system = row.pop("first_user"), row.pop("last_system")
        ends.append((SessionRow(**row), InteractionRow.from_json(first_user) if first_user else None,
                     InteractionRow.from_json(last_system) if last_system else None))
    return ends, total


def delete_session(conn: psycopg.Connection, session_id: str, owner: str) -> SessionRow | None:
    return one_session(conn, "DELETE FROM sessions WHERE id = %s AND owner = %s RETURNING *", (session_id, owner))


def rename_session(conn: psycopg.Connection, session_id: str, owner: str, name: str) -> SessionRow | None:
    return one_session(conn, "UPDATE sessions SET name = %s, updated = now() WHERE id = %s AND owner = %s"
                       " RETURNING *", (name, session_id, owner))


def update_session_config(conn: psycopg.Connection, session_id: str, owner: str,
                          changes: dict[str, Any]) -> SessionRow | None:
    """Merges `changes` into the session's config (top-level keys replaced)."""
    return one_session(conn, "UPDATE sessions SET config = config || %s, updated = now() WHERE id = %s AND owner = %s"
                       " RETURNING *", (Jsonb(changes), session_id, owner))


def touch_session(conn: psycopg.Connection, session_id: str) -> None:
    conn.execute("UPDATE sessions SET updated = now() WHERE id = %s", (session_id,))


def get_interaction_for_runner(conn: psycopg.Connection, session_id: str,
                               interaction_id: str) -> InteractionRow | None:
    """The interaction, locked for the caller's transaction. Its session is locked first: every
    writer takes the session before its interaction (a cancel locks the session, then the turn; a
    runner's report locks the turn, then touches the session), so no two of them deadlock."""
    conn.execute("SELECT 1 FROM sessions WHERE id = %s FOR NO KEY UPDATE", (session_id,))
    return one_interaction(
        conn, f"SELECT {INTERACTION_COLUMNS} FROM interactions WHERE id = %s AND session_id = %s FOR UPDATE",
        (interaction_id, session_id))


def apply_update(conn: psycopg.Connection, interaction_id: str, *, runner: str, state: str,
                 message: str, progress: int, status: str, files: list[str] | None, error: str,
                 finished: bool, metadata: dict | None, data_prep_stage: str | None = None,
                 lora_dir: str | None = None) -> InteractionRow:
    return one_interaction(
        conn, f"UPDATE interactions SET updated = now(), runner = %s, state = %s, message = %s,"
        f" progress = %s, status = %s, files = coalesce(%s, files), error = %s, finished = %s,"
        f" completed = CASE WHEN %s THEN now() ELSE completed END,"
        f" scheduled = coalesce(scheduled, now()),"
        f" data_prep_stage = coalesce(%s, data_prep_stage), lora_dir = coalesce(%s, lora_dir),"
        f" metadata = metadata || %s WHERE id = %s RETURNING {INTERACTION_COLUMNS}",
        (runner, state, message, progress, status, Jsonb(files) if files is not None else None,
         error, finished, finished, data_prep_stage, lora_dir, Jsonb(metadata or {}), interaction_id))


def reopen_interaction(conn: psycopg.Connection, interaction_id: str, *, stage: str,
                       status: str) -> InteractionRow:
    """A fine-tune interaction taken up again (retry, start after review): waiting, unfinished."""
    return one_interaction(
        conn, f"UPDATE interactions SET updated = now(), state = 'waiting', finished = false,"
        f" completed = NULL, error = '', progress = 0, status = %s, data_prep_stage = %s"
        f" WHERE id = %s RETURNING {INTERACTION_COLUMNS}", (status, stage, interaction_id))


def restart_interaction(conn: psycopg.Connection, interaction_id: str, *, stage: str,
                        status: str, fresh: bool) -> InteractionRow:
    """A finished interaction run again: waiting, unfinished, no error, its attempts and its
    cancellation forgotten. `fresh` clears what the earlier run produced too (a reply, images);
    a fine-tune keeps its metadata (its last checkpoint: training resumes from it)."""
    return one_interaction(
        conn, f"UPDATE interactions SET updated = now(), state = 'waiting', finished = false, completed = NULL,"
        f" error = '', progress = 0, status = %s, data_prep_stage = %s,"
        f" metadata = CASE WHEN %s THEN '{{}}'::jsonb ELSE metadata - 'cancelled' - 'attempts' END,"
        f" message = CASE WHEN %s THEN '' ELSE message END, files = CASE WHEN %s THEN '[]'::jsonb ELSE files END,"
        f" scheduled = NULL, runner = '' WHERE id = %s RETURNING {INTERACTION_COLUMNS}",
        (status, stage, fresh, fresh, fresh, interaction_id))


def finish_finetune(conn: psycopg.Connection, session_id: str, lora_dir: str) -> None:
    """A trained session goes back to inference, served with its adapter (Helix's behaviour)."""
    conn.execute("UPDATE sessions SET mode = 'inference', lora_dir = %s, updated = now() WHERE id = %s",
                 (lora_dir, session_id))


def unfinished_system_interactions(conn: psycopg.Connection, older_than_seconds: float,
                                   after: tuple | None = None, limit: int = 500) -> list:
    """Work that PostgreSQL says should be queued or running: the reconciler's source of truth.
    An interaction in `editing` waits for its user (a fine-tune's review), not for a runner; one
    changed (or released by fair share) in the last `older_than_seconds` is being enqueued by
    whoever changed it; one held back by fair share (queued_work) waits for its owner's share, not
    for a job.

    One page, oldest first; pass the last row's (created, id) as `after` for the next page.
    """
    after_clause = " AND (i.created, i.id) > (%s, %s)" if after else ""
    return conn.execute(
        "SELECT i.id, i.session_id, i.created, i.mode, i.data_prep_stage, s.owner FROM interactions i"
        " JOIN sessions s ON s.id = i.session_id"
        " WHERE NOT i.finished AND i.creator = 'system' AND i.state <> 'editing'"
        " AND NOT EXISTS (SELECT 1 FROM queued_work q WHERE q.interaction_id = i.id"
        " AND (q.released IS NULL OR q.released >= now() - make_interval(secs => %s)))"
        f" AND i.updated < now() - make_interval(secs => %s){after_clause}"
        " ORDER BY i.created, i.id LIMIT %s",
        (older_than_seconds, older_than_seconds, *(after or ()), limit),
    ).fetchall()


def unfinished_system_counts(conn: psycopg.Connection) -> dict[str, int]:
    """How many system interactions are unfinished, by stage: queued (no runner has taken it yet),
    running, review (a fine-tune waiting for its user in `editing`). For /metrics at every scrape:
    one count on the partial index of unfinished interactions."""
    found = {row["stage"]: row["n"] for row in conn.execute(
        "SELECT CASE WHEN state = 'editing' THEN 'review' WHEN scheduled IS NULL THEN 'queued'"
        " ELSE 'running' END AS stage, count(*) AS n FROM interactions"
        " WHERE NOT finished AND creator = 'system' GROUP BY 1")}
    return {stage: found.get(stage, 0) for stage in ("queued", "running", "review")}


def count_attempt(conn: psycopg.Connection, interaction_id: str, attempts: int, status: str) -> None:
    """The interaction's job is queued again: its attempts so far, and a status saying why."""
    conn.execute("UPDATE interactions SET metadata = metadata || %s, status = %s WHERE id = %s",
                 (Jsonb({"attempts": attempts}), status, interaction_id))


def seconds_since_update(conn: psycopg.Connection, interaction: InteractionRow) -> float:
    """By the database's clock, which wrote `updated` (a replica's own clock may differ)."""
    now = conn.execute("SELECT now() AS now").fetchone()["now"]
    return (now - interaction.updated).total_seconds()
