"""The database's part of a backup: every table copied out of one REPEATABLE READ snapshot (so
the copies agree with each other, as of the moment the backup began, while writes go on), and
copied back into an installation of the same schema in one transaction.

PostgreSQL's own COPY through psycopg, rather than pg_dump: no client binary to match to the
server's version, and a restore that lands in a database the control plane has already migrated.
"""
from __future__ import annotations

from graphlib import TopologicalSorter
from pathlib import Path

import psycopg
from psycopg import sql

MIGRATIONS = "schema_migrations"


def tables_in_order(conn: psycopg.Connection) -> list[str]:
    """The public tables, each after the tables its foreign keys point to."""
    names = [r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
    needs: dict[str, set[str]] = {name: set() for name in names}
    for child, parent in conn.execute(
            "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c"
            " JOIN pg_namespace n ON n.oid = c.connamespace WHERE c.contype = 'f' AND n.nspname = 'public'"):
        if child != parent and child in needs:
            needs[child].add(parent)
    return list(TopologicalSorter(needs).static_order())


def migrations(conn: psycopg.Connection) -> list[int]:
    return [r[0] for r in conn.execute(f"SELECT version FROM {MIGRATIONS} ORDER BY version")]


def export(database_url: str, folder: Path) -> dict:
    """Copies every table into `folder`, one file each; returns what the manifest says of them."""
    folder.mkdir(parents=True)
    with psycopg.connect(database_url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            began = conn.execute("SELECT now()").fetchone()[0]  # the snapshot's moment
            tables = tables_in_order(conn)
            rows = {}
            for table in tables:
                with open(folder / f"{table}.copy", "wb") as out, conn.cursor() as cur:
                    with cur.copy(sql.SQL("COPY {} TO STDOUT").format(sql.Identifier(table))) as copy:
                        for chunk in copy:
                            out.write(chunk)
                    rows[table] = cur.rowcount
            versions = migrations(conn)
    return {"began": began.isoformat(), "migrations": versions, "tables": tables, "rows": rows}


def load(database_url: str, folder: Path, manifest: dict) -> dict[str, int]:
    """Replaces every table's rows with the backup's, in one transaction; returns rows by table."""
    with psycopg.connect(database_url) as conn:
        here = migrations(conn)
        if here != manifest["migrations"]:
            raise BackupRefused(
                f"this installation's schema is at migration {here[-1] if here else 'none'} and the backup's at"
                f" {manifest['migrations'][-1]}: restore with the release that made the backup, then upgrade")
        tables = tables_in_order(conn)
        if set(tables) != set(manifest["tables"]):
            raise BackupRefused("the backup's tables are not this installation's: restore with the release"
                                 " that made the backup")
        loaded = {}
        with conn.transaction():
            conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(sql.SQL(", ").join(map(sql.Identifier, tables))))
            for table in tables:
                with open(folder / f"{table}.copy", "rb") as data, conn.cursor() as cur:
                    with cur.copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))) as copy:
                        while chunk := data.read(1024 * 1024):
                            copy.write(chunk)
                    loaded[table] = cur.rowcount
            _advance_sequences(conn)
    return loaded


def _advance_sequences(conn: psycopg.Connection) -> None:
    """Each serial column's sequence past the largest value restored (a new row must not collide)."""
    for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
            " AND column_default LIKE 'nextval(%%'").fetchall():
        conn.execute(sql.SQL("SELECT setval(pg_get_serial_sequence(%s, %s), coalesce(max({}), 0) + 1, false)"
                             " FROM {}").format(sql.Identifier(column), sql.Identifier(table)), (table, column))


class BackupRefused(Exception):
    """A backup or a restore that cannot go ahead as asked; the message says why and what to do."""
