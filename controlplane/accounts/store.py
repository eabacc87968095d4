"""Users, their passwords, API keys and runner tokens. Secrets are stored only as SHA-256 digests;
passwords only as slow salted hashes (werkzeug's scrypt), since people reuse them."""
from __future__ import annotations

import functools
import hashlib
import secrets
import uuid
from typing import Any

import psycopg
from werkzeug.security import check_password_hash, generate_password_hash

from controlplane.usage.plans import DEFAULT_PLAN, limits_from
from shared.types import API_KEY_PREFIX, RUNNER_TOKEN_PREFIX


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def email_digest(email: str) -> str:
    """An email as sign-in records know it (failure counters, a browser's known emails)."""
    return digest(email.strip().lower())


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def _hint(secret: str) -> str:
    return secret[:7] + "…" + secret[-4:]


# What a request sees of its user: never the password hash.
USER_COLUMNS = "id, email, is_admin, created"
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1000  # hashing is slow on purpose: a megabyte of password must not cost seconds


def create_user(conn: psycopg.Connection, email: str, is_admin: bool = False, password: str = "",
                plan: str = DEFAULT_PLAN) -> dict[str, Any]:
    return conn.execute(
        "INSERT INTO users (id, email, is_admin, password_hash, plan) VALUES (%s, %s, %s, %s, %s)"
        f" RETURNING {USER_COLUMNS}",
        (str(uuid.uuid4()), email, is_admin, hash_password(password) if password else "", plan),
    ).fetchone()


def get_user_by_email(conn: psycopg.Connection, email: str) -> dict[str, Any] | None:
    return conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE email = %s", (email,)).fetchone()


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"a password must have at least {MIN_PASSWORD_CHARS} characters"
    if len(password) > MAX_PASSWORD_CHARS:
        return f"a password must have at most {MAX_PASSWORD_CHARS} characters"
    return None


def hash_password(password: str) -> str:
    problem = password_problem(password)
    if problem:
        raise ValueError(problem)
    return generate_password_hash(password)


def set_password(conn: psycopg.Connection, user_id: str, password: str) -> None:
    """Sets a user's password and signs out every browser signed in with the old one."""
    conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (hash_password(password), user_id))
    conn.execute("DELETE FROM sign_ins WHERE user_id = %s", (user_id,))


@functools.cache
def _dummy_hash() -> str:
    """Checked when the email is unknown, so a wrong email takes as long as a wrong password."""
    return generate_password_hash(secrets.token_urlsafe(16))


def user_for_password(conn: psycopg.Connection, email: str, password: str) -> dict[str, Any] | None:
    """The user with this email and password, or None (an unknown email and a wrong password look alike)."""
    row = conn.execute(f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE lower(email) = lower(%s)"
                       " ORDER BY email = %s DESC LIMIT 1", (email, email)).fetchone()
    if len(password) > MAX_PASSWORD_CHARS:
        return None
    if row is None or not row["password_hash"]:
        check_password_hash(_dummy_hash(), password)
        return None
    if not check_password_hash(row.pop("password_hash"), password):
        return None
    return row


def create_api_key(conn: psycopg.Connection, owner: str, name: str,
                   plan: str | None = None) -> tuple[dict[str, Any], str]:
    """Returns the stored row and the key itself, which is shown once and never stored. `plan`:
    a plan of the key's own, limiting it besides its user's."""
    key = new_secret(API_KEY_PREFIX)
    row = conn.execute(
        "INSERT INTO api_keys (id, owner, name, digest, hint, plan) VALUES (%s, %s, %s, %s, %s, %s)"
        " RETURNING id, owner, name, hint, created",
        (str(uuid.uuid4()), owner, name, digest(key), _hint(key), plan),
    ).fetchone()
    return row, key


def list_api_keys(conn: psycopg.Connection, owner: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, owner, name, hint, created FROM api_keys WHERE owner = %s ORDER BY created, id",
        (owner,),
    ).fetchall()


def own_api_key(conn: psycopg.Connection, owner: str, key: str) -> dict[str, Any] | None:
    """The owner's key whose secret is `key` (None for anyone else's, or none)."""
    return conn.execute("SELECT id, owner, name, hint, created FROM api_keys WHERE owner = %s AND digest = %s",
                        (owner, digest(key))).fetchone()


def rename_api_key(conn: psycopg.Connection, owner: str, key_id: str, name: str) -> dict[str, Any] | None:
    return conn.execute(
        "UPDATE api_keys SET name = %s WHERE owner = %s AND id = %s RETURNING id, owner, name, hint, created",
        (name, owner, key_id),
    ).fetchone()


def delete_api_key(conn: psycopg.Connection, owner: str, key_or_id: str) -> bool:
    """Deletes one of the owner's keys, named by its id or by the key itself."""
    cur = conn.execute(
        "DELETE FROM api_keys WHERE owner = %s AND (id = %s OR digest = %s)",
        (owner, key_or_id, digest(key_or_id)),
    )
    return cur.rowcount > 0


def with_limits(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A request's user with its plans' limits read (usage/plans.py): the user's, and the key's own."""
    if row is not None:
        row["plan_limits"] = limits_from(row["plan_limits"])
        if row.get("key_plan") is not None:
            row["key_plan_limits"] = limits_from(row["key_plan_limits"])
    return row


def user_for_api_key(conn: psycopg.Connection, key: str) -> dict[str, Any] | None:
    """The key's user, with the key's id and the limits of the user's plan and of the key's own."""
    return with_limits(conn.execute(
        "SELECT u.id, u.email, u.is_admin, u.created, k.id AS key_id, u.plan, p.limits AS plan_limits,"
        " k.plan AS key_plan, kp.limits AS key_plan_limits"
        " FROM api_keys k JOIN users u ON u.id = k.owner JOIN plans p ON p.name = u.plan"
        " LEFT JOIN plans kp ON kp.name = k.plan WHERE k.digest = %s",
        (digest(key),),
    ).fetchone())


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
