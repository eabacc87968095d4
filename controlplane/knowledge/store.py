"""A session's document chunks in PostgreSQL, and the hybrid search over them: pgvector's cosine
distance to the question's embedding and full-text search for its words, each ranking the
session's chunks, fused by reciprocal rank (a chunk high in either list comes first, one high in
both first of all). Every query names the session and its owner: one user's chunks are never
found for another, and only chunks of a whole index (marked ready once every document of the
index job is in) are found at all. Rows are read as dicts, as the control plane's connections give
them."""
from __future__ import annotations

from dataclasses import dataclass

import psycopg

# Reciprocal rank fusion's constant (Cormack et al., 2009): damps the weight of the very first ranks.
FUSION_K = 60
# How deep each ranking looks before they are fused.
CANDIDATES = 40


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    embedding: list[float]


@dataclass(frozen=True)
class Found:
    file: str
    index: int
    text: str
    similarity: float  # the cosine similarity of the chunk and the question (-1 to 1)
    score: float       # the fused rank score the results are ordered by


def _vector(values: list[float]) -> str:
    return "[" + ",".join(f"{v:.7g}" for v in values) + "]"


def replace_document(conn: psycopg.Connection, session_id: str, owner: str, file: str, chunks: list[Chunk]) -> None:
    """The document's chunks, replacing any it had (an index made again after a retry)."""
    conn.execute("DELETE FROM document_chunks WHERE session_id = %s AND file = %s", (session_id, file))
    append_chunks(conn, session_id, owner, file, chunks)


def append_chunks(conn: psycopg.Connection, session_id: str, owner: str, file: str, chunks: list[Chunk]) -> None:
    """More of a document's chunks (a long document is reported in batches), replacing any of the same index."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO document_chunks (session_id, owner, file, chunk_index, text, embedding)"
            " VALUES (%s, %s, %s, %s, %s, %s::vector) ON CONFLICT (session_id, file, chunk_index)"
            " DO UPDATE SET text = excluded.text, embedding = excluded.embedding, ready = false",
            [(session_id, owner, file, c.index, c.text, _vector(c.embedding)) for c in chunks])


def copy_index(conn: psycopg.Connection, from_session: str, to_session: str) -> None:
    """A clone's copy of its source's whole index (the same owner's)."""
    conn.execute("INSERT INTO document_chunks (session_id, owner, file, chunk_index, text, embedding, ready)"
                 " SELECT %s, owner, file, chunk_index, text, embedding, true FROM document_chunks"
                 " WHERE session_id = %s AND ready", (to_session, from_session))


def mark_ready(conn: psycopg.Connection, session_id: str) -> int:
    """The session's index is whole: its chunks are searched from now on. Returns how many it holds."""
    conn.execute("UPDATE document_chunks SET ready = true WHERE session_id = %s AND NOT ready", (session_id,))
    return conn.execute("SELECT count(*) AS n FROM document_chunks WHERE session_id = %s",
                        (session_id,)).fetchone()["n"]


def count(conn: psycopg.Connection, session_id: str, owner: str) -> int:
    """The chunks of the session that searches find (those of a whole index)."""
    return conn.execute("SELECT count(*) AS n FROM document_chunks WHERE session_id = %s AND owner = %s"
                        " AND ready", (session_id, owner)).fetchone()["n"]


def search(conn: psycopg.Connection, session_id: str, owner: str, question: str, embedding: list[float],
           limit: int = 4) -> list[Found]:
    """The session's chunks that best answer `question`, best first."""
    rows = conn.execute(
        """
        WITH question AS (
            SELECT %(embedding)s::vector AS embedding,
                   to_tsquery('english', coalesce(nullif(array_to_string(
                       tsvector_to_array(to_tsvector('english', %(question)s)), ' | '), ''), '''''')) AS words
        ), semantic AS (
            SELECT c.id, row_number() OVER (ORDER BY c.embedding <=> q.embedding) AS rank
            FROM document_chunks c, question q
            WHERE c.session_id = %(session)s AND c.owner = %(owner)s AND c.ready
            ORDER BY c.embedding <=> q.embedding LIMIT %(candidates)s
        ), lexical AS (
            SELECT c.id, row_number() OVER (ORDER BY ts_rank_cd(c.words, q.words) DESC) AS rank
            FROM document_chunks c, question q
            WHERE c.session_id = %(session)s AND c.owner = %(owner)s AND c.ready AND c.words @@ q.words
            ORDER BY ts_rank_cd(c.words, q.words) DESC LIMIT %(candidates)s
        )
        SELECT c.file, c.chunk_index AS index, c.text, 1 - (c.embedding <=> q.embedding) AS similarity,
               coalesce(1.0 / (%(k)s + s.rank), 0) + coalesce(1.0 / (%(k)s + l.rank), 0) AS score
        FROM document_chunks c CROSS JOIN question q
             LEFT JOIN semantic s ON s.id = c.id LEFT JOIN lexical l ON l.id = c.id
        WHERE c.session_id = %(session)s AND c.owner = %(owner)s AND c.ready AND (s.id IS NOT NULL OR l.id IS NOT NULL)
        ORDER BY score DESC, similarity DESC LIMIT %(limit)s
        """,
        {"embedding": _vector(embedding), "question": question, "session": session_id, "owner": owner,
         "candidates": CANDIDATES, "k": FUSION_K, "limit": limit}).fetchall()
    return [Found(file=r["file"], index=r["index"], text=r["text"], similarity=float(r["similarity"]),
                  score=float(r["score"])) for r in rows]
