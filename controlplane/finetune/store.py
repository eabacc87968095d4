"""SQL for text fine-tunes: question/answer pairs, per-file and per-chunk results
(`data_prep_chunks`) and the training history kept in the interaction."""
from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from controlplane.sessions.store import INTERACTION_COLUMNS, new_id, one_interaction
from controlplane.storage.rows import InteractionRow

PAIR_FIELDS = ("id", "document", "chunk_index", "fact", "style", "question", "answer")


def list_pairs(conn: psycopg.Connection, interaction_id: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, document, chunk_index, fact, style, question, answer FROM qa_pairs"
        " WHERE interaction_id = %s ORDER BY seq", (interaction_id,)).fetchall()


def session_pairs(conn: psycopg.Connection, session_id: str) -> list[dict[str, Any]]:
    """Every pair of every fine-tune interaction of the session: a retrain after more documents
    were added learns all of them."""
    return conn.execute(
        "SELECT p.question, p.answer, p.fact, p.document, p.system_prompt, p.held_out FROM qa_pairs p"
        " JOIN interactions i ON i.id = p.interaction_id WHERE i.session_id = %s"
        " ORDER BY i.seq, p.seq", (session_id,)).fetchall()


def count_pairs(conn: psycopg.Connection, interaction_id: str) -> int:
    return conn.execute("SELECT count(*) AS n FROM qa_pairs WHERE interaction_id = %s",
                        (interaction_id,)).fetchone()["n"]


def _insert(conn: psycopg.Connection, interaction_id: str, pairs: list[dict[str, Any]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO qa_pairs (id, interaction_id, seq, document, chunk_index, fact, style, question, answer,"
            " system_prompt, held_out)"
            " VALUES (%s, %s, (SELECT coalesce(max(seq), 0) + 1 FROM qa_pairs WHERE interaction_id = %s),"
            " %s, %s, %s, %s, %s, %s, %s, %s)",
            [(new_id(), interaction_id, interaction_id, p.get("document", ""), p.get("chunk_index", 0),
              p.get("fact", ""), p.get("style", ""), p["question"], p["answer"], p.get("system_prompt"),
              p.get("held_out", False)) for p in pairs])


def replace_chunk_pairs(conn: psycopg.Connection, interaction_id: str, document: str, chunk_index: int,
                        pairs: list[dict[str, Any]]) -> None:
    """A chunk's pairs as its latest attempt made them (a retried chunk never doubles its pairs)."""
    conn.execute("DELETE FROM qa_pairs WHERE interaction_id = %s AND document = %s AND chunk_index = %s",
                 (interaction_id, document, chunk_index))
    _insert(conn, interaction_id, [{**p, "document": document, "chunk_index": chunk_index} for p in pairs])


def add_pairs(conn: psycopg.Connection, interaction_id: str, pairs: list[dict[str, Any]]) -> None:
    """Pairs given whole (an OpenAI job's examples): each may carry its own `system_prompt` and
    be `held_out` for evaluation."""
    _insert(conn, interaction_id, pairs)


def replace_all_pairs(conn: psycopg.Connection, interaction_id: str, pairs: list[dict[str, Any]]) -> None:
    """The reviewer's edited list replaces the generated one."""
    conn.execute("DELETE FROM qa_pairs WHERE interaction_id = %s", (interaction_id,))
    _insert(conn, interaction_id, pairs)


def copy_pairs(conn: psycopg.Connection, from_interaction: str, to_interaction: str) -> None:
    conn.execute(
        "INSERT INTO qa_pairs (id, interaction_id, seq, document, chunk_index, fact, style, question, answer,"
        " system_prompt, held_out) SELECT gen_random_uuid()::text, %s, seq, document, chunk_index, fact, style,"
        " question, answer, system_prompt, held_out"
        " FROM qa_pairs WHERE interaction_id = %s", (to_interaction, from_interaction))


def set_document(conn: psycopg.Connection, interaction_id: str, document: str, report: dict[str, Any]) -> None:
    """One file's entry in `data_prep_chunks`: its size in characters, chunks, and error."""
    conn.execute(
        "UPDATE interactions SET updated = now(), data_prep_chunks = data_prep_chunks || %s WHERE id = %s",
        (Jsonb({document: report}), interaction_id))


def set_chunk(conn: psycopg.Connection, interaction_id: str, document: str, index: int,
              report: dict[str, Any]) -> None:
    """One chunk's result inside its file's entry (the file's entry exists: the runner reports
    a file's chunks after the file itself)."""
    conn.execute(
        "UPDATE interactions SET updated = now(), data_prep_chunks = jsonb_set(data_prep_chunks,"
        " ARRAY[%s, 'chunks', %s], %s, true) WHERE id = %s",
        (document, str(index), Jsonb(report), interaction_id))


def append_history(conn: psycopg.Connection, interaction_id: str, points: list[dict[str, Any]]) -> None:
    """Training loss and validation loss, kept in the interaction's metadata as a growing list."""
    conn.execute(
        "UPDATE interactions SET updated = now(), metadata = jsonb_set(metadata, '{training_history}',"
        " coalesce(metadata -> 'training_history', '[]'::jsonb) || %s, true) WHERE id = %s",
        (Jsonb(points), interaction_id))


def set_stage(conn: psycopg.Connection, interaction_id: str, stage: str, *, state: str, status: str,
              progress: int = 0) -> InteractionRow:
    return one_interaction(
        conn, f"UPDATE interactions SET updated = now(), data_prep_stage = %s, state = %s, status = %s,"
        f" progress = %s WHERE id = %s RETURNING {INTERACTION_COLUMNS}",
        (stage, state, status, progress, interaction_id))


def merge_metadata(conn: psycopg.Connection, interaction_id: str, metadata: dict[str, Any]) -> None:
    conn.execute("UPDATE interactions SET updated = now(), metadata = metadata || %s WHERE id = %s",
                 (Jsonb(metadata), interaction_id))


def reopen_for_documents(conn: psycopg.Connection, session_id: str, options: dict[str, Any]) -> None:
    """A session taking more documents is a fine-tune again, with its fine-tune options now."""
    conn.execute("UPDATE sessions SET mode = 'finetune', config = config || %s, updated = now() WHERE id = %s",
                 (Jsonb({"finetune": options}), session_id))


def set_chunks(conn: psycopg.Connection, interaction_id: str, chunks: dict[str, Any]) -> None:
    """The whole data-preparation record (a clone takes its source's)."""
    conn.execute("UPDATE interactions SET data_prep_chunks = %s WHERE id = %s", (Jsonb(chunks), interaction_id))
