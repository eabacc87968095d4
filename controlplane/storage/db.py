"""PostgreSQL connection pool, one per app, with rows as dicts."""
from __future__ import annotations

import atexit
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg
from flask import Flask, current_app
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool


def init_app(app: Flask) -> None:
    pool = ConnectionPool(
        app.config["HELIX"].database_url,
        min_size=1,
        max_size=int(app.config.get("DB_POOL_SIZE", 10)),
        kwargs={"row_factory": dict_row, "autocommit": False},
        open=True,
    )
    app.extensions["db_pool"] = pool
    atexit.register(pool.close)  # while the process can still wait for the pool's own threads


def pool() -> ConnectionPool:
    return current_app.extensions["db_pool"]


@contextmanager
def transaction() -> Iterator[psycopg.Connection]:
    """A connection inside one transaction: committed on success, rolled back on error."""
    with pool().connection() as conn:
        yield conn


@contextmanager
def read() -> Iterator[psycopg.Connection]:
    """A connection for one read-only statement, sent without BEGIN and COMMIT: a status poll
    costs one round trip to PostgreSQL instead of three. One statement sees one snapshot anyway;
    use transaction() for several that must agree."""
    with pool().connection() as conn:
        conn.autocommit = True
        try:
            yield conn
        finally:
            if not conn.closed:
                conn.autocommit = False


def storable(value: Any) -> Any:
    """PostgreSQL text and jsonb hold neither NUL nor lone surrogates, and models do emit NUL:
    store U+FFFD and '?' instead."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [storable(v) for v in value]
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    return value
