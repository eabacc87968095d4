"""Session and interaction JSON in Helix's field names."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from controlplane.storage.rows import INTERACTION_FIELDS, SESSION_FIELDS, InteractionRow, SessionRow

_INTERACTION_VIEW_FIELDS = tuple(f for f in INTERACTION_FIELDS if f not in ("session_id", "seq"))


def iso_time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def interaction_view(row: InteractionRow) -> dict[str, Any]:
    view = {k: getattr(row, k) for k in _INTERACTION_VIEW_FIELDS}
    for k in ("created", "updated", "scheduled", "completed"):
        view[k] = iso_time(view[k])
    if row.mode == "finetune" and row.creator == "system":
        view["qa_pairs"] = [{k: v for k, v in p.items() if k != "seq"} for p in row.qa_pairs or []]
    return view


def session_view(row: SessionRow, interactions: list[InteractionRow]) -> dict[str, Any]:
    view = {k: getattr(row, k) for k in SESSION_FIELDS}
    view["created"] = iso_time(row.created)
    view["updated"] = iso_time(row.updated)
    view["interactions"] = [interaction_view(i) for i in interactions]
    return view


def api_key_view(row: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    view = {"id": row["id"], "name": row["name"], "hint": row["hint"], "owner": row["owner"],
            "created": iso_time(row["created"])}
    if key is not None:
        view["key"] = key
    return view
