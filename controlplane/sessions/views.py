"""Session and interaction JSON in Helix's field names."""
from __future__ import annotations

import json
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from controlplane.storage.rows import INTERACTION_FIELDS, SESSION_FIELDS, InteractionRow, SessionRow

_INTERACTION_VIEW_FIELDS = tuple(f for f in INTERACTION_FIELDS if f not in ("session_id", "seq"))
# Fields added to an interaction's view after it is built (pairs, its place in the queue): never
# taken by a metadata value.
_LATER_FIELDS = frozenset({"qa_pairs", "queue_position", "waiting_reason"})


def iso_time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# What Helix sent for a time not set yet (Go's zero time.Time): its clients read every time as text.
UNSET_TIME = "0001-01-01T00:00:00Z"


def helix_time(value: datetime | None) -> str:
    return value.isoformat() if value is not None else UNSET_TIME


def helix_chunks(files: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Helix's `data_prep_chunks`: each file's chunks as `{index, question_count, error}` (a file
    that failed whole, one entry with its error); the whole report is `data_prep_files`."""
    chunks = {}
    for name, info in (files or {}).items():
        info = info if isinstance(info, dict) else {}
        listed = [{"index": c.get("index", 0), "question_count": c.get("question_count", 0),
                   "error": c.get("error") or ""} for c in info.get("chunks") or [] if isinstance(c, dict)]
        if not listed and info.get("error"):
            listed = [{"index": 0, "question_count": 0, "error": info["error"]}]
        chunks[name] = listed
    return chunks


def turn_messages(creator: str, message: str) -> list[dict[str, str]]:
    """Helix's `messages` of one turn: its text, as the user's or the assistant's."""
    return [{"role": "user" if creator == "user" else "assistant", "content": message}] if message else []


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)


def interaction_view(row: InteractionRow) -> dict[str, Any]:
    """The interaction in Helix's shape. Its `metadata` is Helix's map of strings (a number or
    yes/no as text: "2", "true"); a structured value kept in it (a training history, an
    evaluation, a data preparation summary, token usage) is a field of the interaction's own."""
    view = {k: getattr(row, k) for k in _INTERACTION_VIEW_FIELDS}
    for k in ("created", "updated", "scheduled", "completed"):
        view[k] = helix_time(view[k])
    view["messages"] = turn_messages(row.creator, row.message)
    view["data_prep_files"] = row.data_prep_chunks or {}
    view["data_prep_chunks"] = helix_chunks(row.data_prep_chunks)
    flat = {}
    for key, value in (row.metadata or {}).items():
        if isinstance(value, (dict, list)) and key not in view and key not in _LATER_FIELDS:
            view[key] = value
        else:
            flat[key] = _as_text(value)
    view["metadata"] = flat
    if row.mode == "finetune" and row.creator == "system":
        view["qa_pairs"] = [{k: v for k, v in p.items() if k != "seq"} for p in row.qa_pairs or []]
    return view


def _platform_version() -> str:
    try:
        return version("helix-platform")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0.0.0"


PLATFORM_VERSION = _platform_version()


def helix_config(row: SessionRow) -> dict[str, Any]:
    """Helix's session `config` keys (its SessionMetadata), read from where this platform keeps
    them: the owner's settings (shared, avatar, priority), the fine-tune's options, the chat's
    system prompt, and the session it was cloned from."""
    config = row.config or {}
    finetune = config.get("finetune") or {}
    return {
        "original_mode": "finetune" if finetune or config.get("openai_job") else row.mode,
        "origin": {"type": "cloned" if row.parent_session else "user_created",
                   "cloned_session_id": row.parent_session or "",
                   "cloned_interaction_id": config.get("cloned_interaction_id", "")},
        "shared": bool(config.get("shared", False)),
        "avatar": config.get("avatar", ""),
        "priority": bool(config.get("priority", False)),
        "document_ids": config.get("document_ids", {}),
        "document_group_id": config.get("document_group_id", ""),
        "manually_review_questions": bool(finetune.get("manually_review_questions", False)),
        # Helix's later names of the two ways a fine-tune learns from its documents.
        "rag_enabled": bool((finetune.get("knowledge") or {}).get("retrieval", False)),
        "text_finetune_enabled": bool((finetune.get("knowledge") or {}).get("finetune", bool(finetune))),
        "system_prompt": (config.get("text") or {}).get("system_prompt", ""),
        "helix_version": PLATFORM_VERSION,
    }


def session_view(row: SessionRow, interactions: list[InteractionRow]) -> dict[str, Any]:
    view = {k: getattr(row, k) for k in SESSION_FIELDS}
    view["config"] = {**(row.config or {}), **helix_config(row)}
    view["parent_bot"] = view["child_bot"] = ""  # Helix's bots: none here
    view["created"] = iso_time(row.created)
    view["updated"] = iso_time(row.updated)
    view["interactions"] = [interaction_view(i) for i in interactions]
    return view


def session_summary(row: SessionRow, interactions: list[InteractionRow]) -> dict[str, Any]:
    """Helix's SessionSummary: the session as its list shows it, timed by its last system turn;
    `summary` is the first prompt of a chat, or what a fine-tune learns from."""
    return summary_of(row, next((i for i in interactions if i.creator == "user"), None),
                      next((i for i in reversed(interactions) if i.creator == "system"), None))


def summary_of(row: SessionRow, user: InteractionRow | None, system: InteractionRow | None) -> dict[str, Any]:
    """session_summary from the session's first user turn and last system turn alone."""
    helix = helix_config(row)
    if helix["original_mode"] == "finetune":
        summary = f"fine tuning on {len(user.files) if user else 0} files"
    else:
        summary = user.message if user else ""
    return {"session_id": row.id, "name": row.name, "interaction_id": system.id if system else "",
            "mode": row.mode, "type": row.type, "model_name": row.model_name, "owner": row.owner,
            "lora_dir": row.lora_dir, "summary": summary, "priority": helix["priority"],
            "created": helix_time(system.created if system else row.created),
            "updated": helix_time(system.updated if system else row.updated),
            "scheduled": helix_time(system.scheduled if system else None),
            "completed": helix_time(system.completed if system else None)}


def api_key_view(row: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    """Helix's ApiKey (owner, owner_type, key, name) and ours beside it. Keys are stored as
    digests: `key` is the whole key only where the caller has it (made just now, or checked), else
    its hint, the few characters kept to tell keys apart."""
    return {"id": row["id"], "name": row["name"], "hint": row["hint"], "owner": row["owner"], "owner_type": "user",
            "key": key if key is not None else row["hint"], "created": iso_time(row["created"])}
