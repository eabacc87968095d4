"""Numbered SQL migrations applied at start-up.

Safe with several replicas starting at once: the whole run holds a PostgreSQL advisory lock,
so one replica applies what is missing and the others find it done.

Safe under load: a migration that must wait for a table's lock (a long transaction is writing
it) waits at most LOCK_TIMEOUT, then steps back and tries again a moment later. Waiting longer
would stop every request behind it, since PostgreSQL queues them behind the waiting migration.
"""
from __future__ import annotations

import logging
import time
from importlib import resources

import psycopg

log = logging.getLogger(__name__)
_LOCK_KEY = 0x48454C4958  # "HELIX"
LOCK_TIMEOUT = "500ms"
LOCK_ATTEMPTS = 60  # about five minutes of stepping back before a migration gives up


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("controlplane.storage.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


def apply_migrations(database_url: str, upto: int | None = None) -> list[str]:
    """Apply every migration not yet recorded (up to version `upto`, where given); returns the
    names applied by this call."""
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in _migrations():
                if version in done or (upto is not None and version > upto):
                    continue
                _apply(conn, version, name, sql)
                log.info("applied migration %s", name)
                applied.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def _apply(conn: psycopg.Connection, version: int, name: str, sql: str) -> None:
    """One migration in one transaction, stepping back whenever a lock is not free within
    LOCK_TIMEOUT (see the module's docstring)."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            return
        except psycopg.errors.LockNotAvailable:
            if attempt == LOCK_ATTEMPTS:
                raise
            log.warning("migration %s waited %s for a lock (a long transaction holds it): trying again", name,
                        LOCK_TIMEOUT)
            time.sleep(min(5.0, 0.2 * attempt))
