"""SQL for fair share: the `queued_work` table, one row per unfinished system interaction's job
(its owner, its queue, when it was submitted and, once queued in Redis, when it was released)."""
from __future__ import annotations

import psycopg


def lock(conn: psycopg.Connection, owner: str) -> None:
    """Serializes the release decisions of one owner, on every replica, until the caller's
    transaction ends: two of them never both see the same free slot (on a queue, or of the
    owner's plan's concurrent jobs)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"fair-share:{owner}",))


def submit(conn: psycopg.Connection, interaction_id: str, owner: str, queue: str, api_key_id: str | None) -> None:
    """The interaction's job waits, last in its owner's line on `queue` (a new stage of a fine-tune,
    or a restart, takes a new place). `api_key_id`: the key that asked for it, which its usage is
    recorded against (a next stage queued by a runner's report keeps the key of the first)."""
    conn.execute(
        "INSERT INTO queued_work (interaction_id, owner, queue, api_key_id) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (interaction_id) DO UPDATE SET owner = excluded.owner, queue = excluded.queue,"
        " submitted = clock_timestamp(), released = NULL,"
        " api_key_id = coalesce(excluded.api_key_id, queued_work.api_key_id)",
        (interaction_id, owner, queue, api_key_id))


def place_of(conn: psycopg.Connection, interaction_id: str) -> tuple[str, str] | None:
    """The owner and queue the interaction holds a place on, if any."""
    row = conn.execute("SELECT owner, queue FROM queued_work WHERE interaction_id = %s", (interaction_id,)).fetchone()
    return (row["owner"], row["queue"]) if row else None


def forget(conn: psycopg.Connection, interaction_id: str) -> None:
    conn.execute("DELETE FROM queued_work WHERE interaction_id = %s", (interaction_id,))


def running(conn: psycopg.Connection, queue: str | None, owner: str | None = None) -> int:
    """The released jobs on `queue` (None: every queue), the owner's or everyone's, whose
    interaction is unfinished and not waiting for its user (a fine-tune's review holds no worker)."""
    where = {"q.queue = %s": queue, "q.owner = %s": owner}
    wanted = [(clause, value) for clause, value in where.items() if value is not None]
    return conn.execute(
        "SELECT count(*) AS n FROM queued_work q JOIN interactions i ON i.id = q.interaction_id"
        f" WHERE {''.join(clause + ' AND ' for clause, _ in wanted)}"
        "q.released IS NOT NULL AND NOT i.finished AND i.state <> 'editing'",
        [value for _, value in wanted]).fetchone()["n"]


def waiting(conn: psycopg.Connection, owner: str) -> int:
    """The owner's jobs waiting for a worker: held here, or queued in Redis and not yet taken."""
    return conn.execute(
        "SELECT count(*) AS n FROM queued_work q JOIN interactions i ON i.id = q.interaction_id"
        " WHERE q.owner = %s AND NOT i.finished AND i.state <> 'editing'"
        " AND (q.released IS NULL OR i.runner = '')", (owner,)).fetchone()["n"]



def owners_waiting_on(conn: psycopg.Connection, queue: str) -> int:
    """How many owners have work submitted to `queue` (released or not)."""
    return conn.execute("SELECT count(DISTINCT owner) AS n FROM queued_work WHERE queue = %s",
                        (queue,)).fetchone()["n"]


def release_oldest(conn: psycopg.Connection, owner: str, queue: str, n: int | None) -> list[dict]:
    """Marks the owner's `n` oldest held jobs on `queue` (None: all) released; returns their
    interaction and session ids, oldest first."""
    rows = conn.execute(
        "WITH picked AS (SELECT q.interaction_id FROM queued_work q JOIN interactions i ON i.id = q.interaction_id"
        " WHERE q.queue = %s AND q.owner = %s AND q.released IS NULL AND NOT i.finished"
        " ORDER BY q.submitted, q.interaction_id LIMIT %s)"
        " UPDATE queued_work q SET released = clock_timestamp() FROM picked, interactions i"
        " WHERE q.interaction_id = picked.interaction_id AND i.id = q.interaction_id"
        " RETURNING q.interaction_id, i.session_id, q.submitted",
        (queue, owner, n)).fetchall()
    return sorted(rows, key=lambda r: (r["submitted"], r["interaction_id"]))


def held(conn: psycopg.Connection, interaction_id: str) -> dict | None:
    """The interaction's place if it is held back: its queue and how many of its owner's jobs on
    that queue were submitted before it and are unfinished (held or running); None when released."""
    return conn.execute(
        "SELECT w.queue, (SELECT count(*) FROM queued_work a JOIN interactions i ON i.id = a.interaction_id"
        " WHERE a.queue = w.queue AND a.owner = w.owner AND NOT i.finished"
        " AND (a.submitted, a.interaction_id) < (w.submitted, w.interaction_id)) AS own_ahead,"
        " (SELECT count(*) FROM queued_work a WHERE a.queue = w.queue AND a.owner = w.owner"
        " AND a.released IS NULL AND (a.submitted, a.interaction_id) < (w.submitted, w.interaction_id)) AS held_ahead"
        " FROM queued_work w WHERE w.interaction_id = %s AND w.released IS NULL", (interaction_id,)).fetchone()


def held_by_queue(conn: psycopg.Connection) -> dict[str, int]:
    """How many jobs wait held back on each queue (for operators: the dashboard and /metrics)."""
    return {row["queue"]: row["n"] for row in conn.execute(
        "SELECT queue, count(*) AS n FROM queued_work WHERE released IS NULL GROUP BY queue")}


def held_lines(conn: psycopg.Connection) -> list[dict]:
    """Each queue and owner with jobs held back."""
    return conn.execute("SELECT DISTINCT queue, owner FROM queued_work WHERE released IS NULL").fetchall()


def forget_finished(conn: psycopg.Connection) -> int:
    """Rows of interactions that finished without passing through finish() (a crash in between)."""
    return conn.execute("DELETE FROM queued_work q USING interactions i WHERE i.id = q.interaction_id"
                        " AND i.finished").rowcount
