"""When PostgreSQL or Redis is away, clients get an answer they can act on, and nothing is lost."""
from __future__ import annotations

from dataclasses import replace

import psycopg
from psycopg.rows import dict_row

from controlplane.accounts import store as accounts
from controlplane.app import create_app
from controlplane.devstack.embedded import EmbeddedPostgres, free_port
from controlplane.storage.migrate import apply_migrations


def test_a_session_created_while_redis_is_away_is_kept(config, user, db):
    app = create_app(replace(config, redis_url=f"redis://127.0.0.1:{free_port()}/0"), start_reconciler=False)
    r = app.test_client().post("/api/v1/sessions", headers=user.headers,
                               data={"input": "hello", "mode": "inference", "type": "text"})
    assert r.status_code == 201, r.json
    # Stored, and unfinished: the reconciler queues it once Redis is back (test_reconciler).
    row = db.execute("SELECT finished, state FROM interactions WHERE id = %s",
                     (r.json["interactions"][-1]["id"],)).fetchone()
    assert row == {"finished": False, "state": "waiting"}


def test_database_away_is_a_503_to_retry(config, tmp_path):
    pg = EmbeddedPostgres(tmp_path / "pg", free_port()).start()
    try:
        apply_migrations(pg.url)
        with psycopg.connect(pg.url, row_factory=dict_row, autocommit=True) as conn:
            user = accounts.create_user(conn, "outage@example.com")
            key = accounts.create_api_key(conn, user["id"], "k")[1]
        app = create_app(replace(config, database_url=pg.url), start_reconciler=False)
        app.extensions["db_pool"].timeout = 2  # seconds to wait for a connection
        client = app.test_client()
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get("/api/v1/sessions", headers=headers).status_code == 200
    finally:
        pg.stop()
    try:
        app.extensions["db_pool"].check()  # drop the pooled connections to the stopped server
        r = client.post("/api/v1/sessions", headers=headers,
                        data={"input": "x", "mode": "inference", "type": "text"})
        assert r.status_code == 503 and "retry" in r.json["error"]
    finally:
        app.extensions["db_pool"].close()
