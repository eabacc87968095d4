"""`helix users delete` and the account page's "Delete my account": a user deleted for good.

In order, so that a deletion stopped half-way can be run again and finishes it:
1. their API keys and web sign-ins go first, so nothing new arrives as the rest is deleted;
2. their queued and running jobs are cancelled (a runner stops the work);
3. their rows go in one transaction: sessions, interactions, question/answer pairs, indexed
   chunks, OpenAI files, and their usage records (or those are kept anonymised, by
   HELIX_DELETED_USER_USAGE); their adapters are recorded as forgotten, which every runner deletes
   from its disks and its model server when it next reports (fleet/forgotten_adapters.py);
4. their folder in the filestore (uploads, outputs, adapters, checkpoints), local or S3;
5. every mention of them in Redis (redis_mentions.py).
Steps 4 and 5 need only the user's id: `helix users delete ID` runs them again if they failed.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import psycopg
from redis import Redis

from controlplane.accounts.store import email_digest
from controlplane.erasure.redis_mentions import remove_mentions
from controlplane.fleet import forgotten_adapters
from controlplane.fleet.dispatch import Dispatcher
from controlplane.storage.filestore import Filestore, UserFiles

log = logging.getLogger(__name__)

ADAPTERS = "adapters (runners delete theirs when they next report)"
# What a deleted user's rows count, by the name the report gives them.
_COUNTS = {
    "sessions": "SELECT count(*) FROM sessions WHERE owner = %(u)s",
    "interactions": "SELECT count(*) FROM interactions i JOIN sessions s ON s.id = i.session_id WHERE s.owner = %(u)s",
    "question/answer pairs": "SELECT count(*) FROM qa_pairs p JOIN interactions i ON i.id = p.interaction_id"
                             " JOIN sessions s ON s.id = i.session_id WHERE s.owner = %(u)s",
    "indexed chunks": "SELECT count(*) FROM document_chunks WHERE owner = %(u)s",
    "OpenAI files": "SELECT count(*) FROM openai_files WHERE owner = %(u)s",
    "usage records": "SELECT count(*) FROM usage_records WHERE owner = %(u)s",
}


@dataclass
class Erased:
    """What a deletion removed, for the operator or the user to read."""

    user_id: str
    email: str = ""
    removed: dict[str, int] = field(default_factory=dict)
    usage: str = "deleted"  # or "anonymised"
    problems: list[str] = field(default_factory=list)  # steps that failed: run it again

    def lines(self) -> list[str]:
        out = [f"deleted user {self.email or '(rows already gone)'} ({self.user_id})"]
        for what, count in self.removed.items():
            note = f", {self.usage}" if what == "usage records" else ""
            out.append(f"  {what}: {count}{note}")
        out += [f"  not finished: {p}" for p in self.problems]
        return out


def erase_user(conn: psycopg.Connection, redis: Redis, dispatcher: Dispatcher, filestore: Filestore,
               user_id: str, keep_usage_anonymised: bool = False) -> Erased:
    """Deletes the user and everything of theirs (see the module's docstring); `conn` is used for
    transactions of its own. A user whose rows are gone already has steps 4 and 5 run again."""
    user = conn.execute("SELECT id, email FROM users WHERE id = %s", (user_id,)).fetchone()
    conn.commit()
    erased = Erased(user_id, user["email"] if user else "", usage="anonymised" if keep_usage_anonymised else "deleted")
    needles = {user_id}
    if user is not None:
        with conn.transaction():  # 1: nothing new arrives in their name
            keys = conn.execute("DELETE FROM api_keys WHERE owner = %s RETURNING id", (user_id,)).fetchall()
            erased.removed["API keys"] = len(keys)
            erased.removed["web sign-ins"] = conn.execute(
                "DELETE FROM sign_ins WHERE user_id = %s", (user_id,)).rowcount
        needles |= {k["id"] for k in keys} | {user["email"], email_digest(user["email"])}
        needles |= _erase_rows(conn, dispatcher, erased, keep_usage_anonymised)
    try:  # 4
        files = UserFiles(filestore, user_id)
        erased.removed["stored bytes"] = files.used_bytes()
        files.remove("")
    except Exception as err:  # the store unreachable: said, and done again by another run
        log.exception("could not delete the files of user %s", user_id)
        erased.problems.append(f"their files in the filestore ({err}): run `helix users delete {user_id}` again")
    try:  # 5
        erased.removed["Redis entries"] = remove_mentions(redis, needles)
    except Exception as err:
        log.exception("could not delete the mentions of user %s in Redis", user_id)
        erased.problems.append(f"their entries in Redis ({err}): run `helix users delete {user_id}` again")
    return erased


def _erase_rows(conn: psycopg.Connection, dispatcher: Dispatcher, erased: Erased, anonymise: bool) -> set[str]:
    """Steps 2 and 3; returns the ids of what went (their mentions in Redis go next)."""
    user_id = erased.user_id
    sessions = [r["id"] for r in conn.execute("SELECT id FROM sessions WHERE owner = %s", (user_id,))]
    interactions = conn.execute("SELECT i.id, i.finished FROM interactions i JOIN sessions s ON s.id = i.session_id"
                                " WHERE s.owner = %s", (user_id,)).fetchall()
    files = [r["id"] for r in conn.execute("SELECT id FROM openai_files WHERE owner = %s", (user_id,))]
    conn.commit()
    for interaction in interactions:  # 2
        if not interaction["finished"]:
            dispatcher.cancel(interaction["id"])
    with conn.transaction():  # 3
        for what, query in _COUNTS.items():
            erased.removed[what] = conn.execute(query, {"u": user_id}).fetchone()["count"]
        erased.removed[ADAPTERS] = forgotten_adapters.forget(
            conn, forgotten_adapters.lora_dirs_of_sessions(conn, sessions))
        if anonymise:  # kept for totals, with nothing that leads back to the user or their sessions
            conn.execute("UPDATE usage_records SET owner = %s, api_key_id = NULL, session_id = '',"
                         " model = CASE WHEN model LIKE 'ft:%%' THEN 'ft:deleted' ELSE model END WHERE owner = %s",
                         (f"deleted-{uuid.uuid4()}", user_id))
        else:
            conn.execute("DELETE FROM usage_records WHERE owner = %s", (user_id,))
        conn.execute("DELETE FROM users WHERE id = %s", (user_id,))  # the rest cascades
    return set(sessions) | {i["id"] for i in interactions} | set(files)
