"""Session and interaction JSON in Helix's field names."""
from __future__ import annotations

from datetime import datetime
from typing import Any

_INTERACTION_FIELDS = (
    "id", "created", "updated", "scheduled", "completed", "creator", "mode", "runner", "message",
    "progress", "files", "finished", "metadata", "state", "status", "error", "lora_dir",
    "data_prep_chunks", "data_prep_stage",
)
_SESSION_FIELDS = (
    "id", "name", "created", "updated", "parent_session", "mode", "type", "model_name", "lora_dir",
    "owner", "owner_type", "config",
)


def iso_time(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value  # already ISO text (rows aggregated by PostgreSQL as JSON), or None


def interaction_view(row: dict[str, Any]) -> dict[str, Any]:
    view = {k: row.get(k) for k in _INTERACTION_FIELDS}
    for k in ("created", "updated", "scheduled", "completed"):
        view[k] = iso_time(view[k])
    if row.get("mode") == "finetune" and row.get("creator") == "system":
        view["qa_pairs"] = [{k: v for k, v in p.items() if k != "seq"} for p in row.get("qa_pairs") or []]
    return view


def session_view(row: dict[str, Any], interactions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    view = {k: row.get(k) for k in _SESSION_FIELDS}
    view["created"] = iso_time(view["created"])
    view["updated"] = iso_time(view["updated"])
    rows = interactions if interactions is not None else row.get("interactions") or []
    view["interactions"] = [interaction_view(i) for i in rows]
    return view


def api_key_view(row: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    view = {"id": row["id"], "name": row["name"], "hint": row["hint"], "owner": row["owner"],
            "created": iso_time(row["created"])}
    if key is not None:
        view["key"] = key
    return view
