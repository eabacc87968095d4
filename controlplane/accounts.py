"""Users, their API keys and runner tokens. Secrets are stored only as SHA-256 digests."""
from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any

import psycopg

from shared.types import API_KEY_PREFIX, RUNNER_TOKEN_PREFIX


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def _hint(secret: str) -> str:
    return secret[:7] + "…" + secret[-4:]


def create_user(conn: psycopg.Connection, email: str, is_admin: bool = False) -> dict[str, Any]:
    return conn.execute(
        "INSERT INTO users (id, email, is_admin) VALUES (%s, %s, %s) RETURNING *",
        (str(uuid.uuid4()), email, is_admin),
    ).fetchone()


def get_user_by_email(conn: psycopg.Connection, email: str) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM users WHERE email = %s", (email,)).fetchone()


def create_api_key(conn: psycopg.Connection, owner: str, name: str) -> tuple[dict[str, Any], str]:
    """Returns the stored row and the key itself, which is shown once and never stored."""
    key = new_secret(API_KEY_PREFIX)
    row = conn.execute(
        "INSERT INTO api_keys (id, owner, name, digest, hint) VALUES (%s, %s, %s, %s, %s)"
        " RETURNING id, owner, name, hint, created",
        (str(uuid.uuid4()), owner, name, digest(key), _hint(key)),
    ).fetchone()
    return row, key


def list_api_keys(conn: psycopg.Connection, owner: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, owner, name, hint, created FROM api_keys WHERE owner = %s ORDER BY created, id",
        (owner,),
    ).fetchall()


def delete_api_key(conn: psycopg.Connection, owner: str, key_or_id: str) -> bool:
    """Deletes one of the owner's keys, named by its id or by the key itself."""
    cur = conn.execute(
        "DELETE FROM api_keys WHERE owner = %s AND (id = %s OR digest = %s)",
        (owner, key_or_id, digest(key_or_id)),
    )
    return cur.rowcount > 0


def user_for_api_key(conn: psycopg.Connection, key: str) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT u.* FROM api_keys k JOIN users u ON u.id = k.owner WHERE k.digest = %s",
        (digest(key),),
    ).fetchone()


def create_runner_token(conn: psycopg.Connection, name: str) -> tuple[dict[str, Any], str]:
    token = new_secret(RUNNER_TOKEN_PREFIX)
    row = conn.execute(
        "INSERT INTO runner_tokens (id, name, digest) VALUES (%s, %s, %s) RETURNING id, name, created",
        (str(uuid.uuid4()), name, digest(token)),
    ).fetchone()
    return row, token


def runner_token_row(conn: psycopg.Connection, token: str) -> dict[str, Any] | None:
    """The token's row, unless it is unknown or revoked."""
    return conn.execute(
        "SELECT id, name FROM runner_tokens WHERE digest = %s AND revoked IS NULL", (digest(token),)
    ).fetchone()


def list_runner_tokens(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every runner token, revoked ones too, with how many runners registered with it and when
    one of them was last heard from."""
    return conn.execute(
        "SELECT t.id, t.name, t.created, t.revoked, count(r.id) AS runners, max(r.last_seen) AS last_seen"
        " FROM runner_tokens t LEFT JOIN runners r ON r.token_id = t.id"
        " GROUP BY t.id ORDER BY t.created, t.id"
    ).fetchall()


def live_runner_token_named(conn: psycopg.Connection, name: str) -> dict[str, Any] | None:
    return conn.execute("SELECT id, name FROM runner_tokens WHERE name = %s AND revoked IS NULL LIMIT 1",
                        (name,)).fetchone()


def revoke_runner_tokens(conn: psycopg.Connection, name_or_id: str) -> list[dict[str, Any]]:
    """Revokes the live tokens with this name (or this id); returns them. Every runner route
    refuses a revoked token from its next request on (runner tokens are never cached)."""
    return conn.execute(
        "UPDATE runner_tokens SET revoked = now() WHERE (name = %s OR id = %s) AND revoked IS NULL"
        " RETURNING id, name, revoked", (name_or_id, name_or_id),
    ).fetchall()
