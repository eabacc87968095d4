"""A request's unit of work (controlplane/storage/db.py): one commit at the end, then what it left
for after the commit; on failure a rollback, nothing of the after-commit work, and its clean-up."""
from __future__ import annotations

import psycopg
import pytest

from controlplane.storage import db


def _count(database_url: str, marker: str) -> int:
    with psycopg.connect(database_url) as other:  # another session: sees only committed rows
        return other.execute("SELECT count(*) FROM users WHERE email = %s", (marker,)).fetchone()[0]


def test_after_commit_runs_once_the_rows_are_visible_to_others(app, config):
    seen = []
    with app.app_context():
        with db.transaction() as conn:
            conn.execute("INSERT INTO users (id, email) VALUES (gen_random_uuid()::text, 'uow-commit@example.com')")
            db.after_commit(conn, lambda: seen.append(_count(config.database_url, "uow-commit@example.com")))
            db.after_rollback(conn, lambda: seen.append("rolled back"))
            assert seen == []  # nothing before the commit
    assert seen == [1]


def test_a_failed_unit_commits_nothing_skips_its_after_commit_work_and_cleans_up(app, config):
    seen = []
    with app.app_context():
        with pytest.raises(RuntimeError, match="refused"):
            with db.transaction() as conn:
                conn.execute("INSERT INTO users (id, email) VALUES (gen_random_uuid()::text, 'uow-fail@example.com')")
                db.after_commit(conn, lambda: seen.append("enqueued"))
                db.after_rollback(conn, lambda: seen.append("files removed"))
                raise RuntimeError("refused")
    assert seen == ["files removed"]
    assert _count(config.database_url, "uow-fail@example.com") == 0


def test_after_commit_needs_a_unit_of_work(app, config):
    with psycopg.connect(config.database_url) as conn, pytest.raises(RuntimeError, match="db.transaction"):
        db.after_commit(conn, lambda: None)
