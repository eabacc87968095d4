"""Adapters runners must delete: those of deleted sessions and users.

A deleted session's adapter is in the filestore (deleted with the session's folder) and in the
cache of every runner that trained or served it, on disk and loaded in its model server. Runners
are told at their next registration, in the order the adapters were forgotten, and say how far
they got; a runner that was away is told when it returns.
"""
from __future__ import annotations

from collections.abc import Iterable

import psycopg

from controlplane.storage.filestore import session_folder
from shared.finetune import adapter_name

PAGE = 500  # names told to a runner per registration


def lora_dirs_of_sessions(conn: psycopg.Connection, session_ids: list[str]) -> set[str]:
    """Every adapter folder these sessions trained: in their own folders (a chat served with
    another session's adapter leaves that adapter to its session)."""
    rows = conn.execute(
        "SELECT id AS session_id, lora_dir FROM sessions WHERE id = ANY(%s) AND lora_dir <> ''"
        " UNION SELECT session_id, lora_dir FROM interactions WHERE session_id = ANY(%s) AND lora_dir <> ''",
        (session_ids, session_ids)).fetchall()
    return {row["lora_dir"] for row in rows if row["lora_dir"].startswith(session_folder(row["session_id"]) + "/")}


def forget(conn: psycopg.Connection, lora_dirs: Iterable[str]) -> int:
    """Records these adapters as forgotten (in the caller's transaction); returns how many."""
    names = sorted({adapter_name(d) for d in lora_dirs})
    if names:
        conn.execute("INSERT INTO forgotten_adapters (name) SELECT unnest(%s::text[])", (names,))
    return len(names)


def told(conn: psycopg.Connection, runner_id: str, seen: int) -> tuple[list[str], int]:
    """Records that the runner deleted the forgotten adapters up to `seen`; returns the next page
    it must delete and the sequence number that page ends at (`seen` when there is none)."""
    conn.execute("UPDATE runners SET forgotten_seen = %s WHERE id = %s AND forgotten_seen <> %s",
                 (seen, runner_id, seen))
    rows = conn.execute("SELECT seq, name FROM forgotten_adapters WHERE seq > %s ORDER BY seq LIMIT %s",
                        (seen, PAGE)).fetchall()
    return [row["name"] for row in rows], rows[-1]["seq"] if rows else seen


def latest(conn: psycopg.Connection) -> int:
    """The sequence number of the adapter forgotten last (0: none)."""
    return conn.execute("SELECT coalesce(max(seq), 0) AS seq FROM forgotten_adapters").fetchone()["seq"]


def runners_behind(conn: psycopg.Connection, seq: int, live_seconds: float) -> list[str]:
    """Live runners that have not yet said they deleted the adapters forgotten up to `seq`."""
    rows = conn.execute("SELECT id FROM runners WHERE forgotten_seen < %s"
                        " AND last_seen > now() - make_interval(secs => %s) ORDER BY id",
                        (seq, live_seconds)).fetchall()
    return [row["id"] for row in rows]
