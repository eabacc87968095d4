"""The typed rows of the two tables most of the control plane reads: a session and its
interactions. The sessions' store builds them with psycopg's `class_row`; every room below the
routes reads their fields as attributes, and `sessions.views` turns them into Helix's JSON.
They live here, beneath fleet and sessions both, because the dispatcher builds jobs from them."""
from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any


@dataclass
class SessionRow:
    id: str
    name: str
    created: datetime
    updated: datetime
    parent_session: str
    mode: str
    type: str
    model_name: str
    lora_dir: str
    owner: str
    owner_type: str
    config: dict[str, Any]


@dataclass
class InteractionRow:
    id: str
    session_id: str
    seq: int
    created: datetime
    updated: datetime
    scheduled: datetime | None
    completed: datetime | None
    creator: str
    mode: str
    runner: str
    message: str
    progress: int
    files: list[str]
    finished: bool
    metadata: dict[str, Any]
    state: str
    status: str
    error: str
    lora_dir: str
    data_prep_chunks: dict[str, Any]
    data_prep_stage: str
    # A fine-tune's question/answer pairs, read only with a whole session for its JSON (the Helix
    # reference lists them in the session's GET response); None wherever they were not read.
    qa_pairs: list[dict[str, Any]] | None = None

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> InteractionRow:
        """One interaction as PostgreSQL aggregated it to JSON: its times come as ISO text."""
        row = cls(**value)
        for name in _TIMES:
            text = getattr(row, name)
            setattr(row, name, datetime.fromisoformat(text) if text else None)
        return row


_TIMES = ("created", "updated", "scheduled", "completed")
SESSION_FIELDS = tuple(f.name for f in fields(SessionRow))
INTERACTION_FIELDS = tuple(f.name for f in fields(InteractionRow) if f.name != "qa_pairs")

# A session with its interactions in order: what a change to a session answers with.
SessionWithInteractions = tuple[SessionRow, list[InteractionRow]]
