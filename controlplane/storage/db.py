"""PostgreSQL connection pool, one per app, with rows as dicts."""
from __future__ import annotations

import atexit
from contextlib import contextmanager
from typing import Any, Callable, Iterator

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


class _Hooks:
    def __init__(self):
        self.after_commit: list[Callable[[], None]] = []
        self.after_rollback: list[Callable[[], None]] = []


# What each open unit of work does once it has committed or rolled back, by its connection.
_hooks: dict[int, _Hooks] = {}


@contextmanager
def transaction() -> Iterator[psycopg.Connection]:
    """A request's unit of work: one transaction on one connection, committed once at the end
    (rolled back on error), and then what the work left for after_commit() is done, in order.
    Services never commit themselves, so nothing a runner or a client acts on is seen before it
    is stored, and nothing is enqueued or published for work that was rolled back."""
    hooks = _Hooks()
    try:
        with pool().connection() as conn:
            _hooks[id(conn)] = hooks
            try:
                with conn.transaction():
                    yield conn
            finally:
                del _hooks[id(conn)]
    except BaseException:
        for action in hooks.after_rollback:
            action()
        raise
    for action in hooks.after_commit:
        action()


def _hooks_of(conn: psycopg.Connection) -> _Hooks:
    hooks = _hooks.get(id(conn))
    if hooks is None:
        raise RuntimeError("a unit of work's hooks need a connection from db.transaction()")
    return hooks


def after_commit(conn: psycopg.Connection, action: Callable[[], None]) -> None:
    """Runs `action` once the unit of work on `conn` has committed: enqueueing a job whose rows a
    runner will look up, publishing an event a client will read the session on, stopping work."""
    _hooks_of(conn).after_commit.append(action)


def after_rollback(conn: psycopg.Connection, action: Callable[[], None]) -> None:
    """Runs `action` if the unit of work on `conn` fails: removing files it stored on the way, so
    a refused request leaves nothing behind."""
    _hooks_of(conn).after_rollback.append(action)


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
