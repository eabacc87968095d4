"""How many chunks a new index may hold: the server's limit per session (HELIX_MAX_INDEX_CHUNKS),
and what is left of the plan's `index_chunks` over all of the user's sessions. A user whose
indexes already fill their plan is refused before anything is stored; the runner refuses an index
past the room it is given before it embeds a chunk."""
from __future__ import annotations

from typing import Any

import psycopg

from controlplane.config import Config
from controlplane.errors import InsufficientQuota
from controlplane.usage.plans import Limits


class IndexFull(InsufficientQuota):
    def __init__(self, used: int, limit: int):
        super().__init__(f"your retrieval indexes hold {used} chunks, your plan's limit (index_chunks) is {limit}:"
                         " delete sessions you no longer need, or fine-tune without retrieval (rag_enabled=no)",
                         "index_chunks", used_chunks=used)


def used_chunks(conn: psycopg.Connection, owner: str) -> int:
    return conn.execute("SELECT count(*) AS n FROM document_chunks WHERE owner = %s", (owner,)).fetchone()["n"]


def room(conn: psycopg.Connection, config: Config, user: dict[str, Any]) -> int:
    """The most chunks a new index of the user's may hold; IndexFull if none."""
    limit = (user.get("plan_limits") or Limits()).index_chunks
    if not limit:
        return config.max_index_chunks
    used = used_chunks(conn, user["id"])
    if used >= limit:
        raise IndexFull(used, limit)
    return min(config.max_index_chunks, limit - used)
