"""Which way a session's chats learn from documents (shared.knowledge.Way), kept in the session's
config under `knowledge`: the index they search (the session's own, or the fine-tune a /v1 `ft:`
model names), the way, and who chose it. A session whose user chose no way is served the way its
knowledge report scored best, once the report is in."""
from __future__ import annotations

from typing import Any

from controlplane.storage.rows import SessionRow
from shared.knowledge import Way

# Scored ties go to the way that uses more of what the user paid for (the report's order, reversed).
_PREFERENCE = (Way.BOTH, Way.FINETUNE, Way.RETRIEVAL, Way.BASE)


def of_new_session(session_id: str, choice: dict[str, Any]) -> dict[str, Any] | None:
    """The `knowledge` config of a new fine-tune session from its form's choice (text_input.knowledge),
    or None when it has no index (fine-tuning alone, as before retrieval existed)."""
    if not choice.get("retrieval"):
        return None
    return {"session_id": session_id, "way": choice["way"], "chosen_by": choice["chosen_by"]}


def index_of(session: SessionRow) -> str | None:
    """The session whose index the session's chats search (its own, or its `ft:` model's); None: none."""
    return (session.config.get("knowledge") or {}).get("session_id") or None


def served_way(session: SessionRow) -> Way | None:
    """How the session's chats are served; None: no index (an adapter, if any, alone)."""
    way = (session.config.get("knowledge") or {}).get("way")
    return Way(way) if way in {w.value for w in Way} else None


def adapter_and_way(session: SessionRow) -> tuple[str, str]:
    """The adapter a chat of the session is served with ("" for none) and the way it retrieves ("" for none)."""
    way = served_way(session)
    if way is None:
        return session.lora_dir, ""
    return (session.lora_dir if way.uses_adapter else ""), way.value


def best_way(evaluation: dict[str, Any]) -> Way | None:
    """The way with the highest mean token F1 in a knowledge report; None if it has no four ways."""
    ways = evaluation.get("ways") or {}
    scored = [(ways[w.value]["token_f1"], -_PREFERENCE.index(w), w) for w in Way if w.value in ways]
    return max(scored)[2] if len(scored) == len(Way) else None


def after_report(session: SessionRow, evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """The session's new `knowledge` config once its report is in: the best way, unless its user chose."""
    knowledge = session.config.get("knowledge") or {}
    best = best_way(evaluation)
    if not knowledge or knowledge.get("chosen_by") == "user" or best is None:
        return None
    return {**knowledge, "way": best.value, "chosen_by": "report"}
