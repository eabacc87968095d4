"""A session's live events and a reply's streamed text, as both sides name them in Redis.

What a runner posts about an interaction is shared/wire.py's InteractionUpdate."""
from __future__ import annotations

# Events published on a session's live channel (server-sent events).
EVENT_INTERACTION = "interaction"
EVENT_DELTA = "delta"


def session_channel(session_id: str) -> str:
    return f"helix:events:session:{session_id}"


# A reply's text so far, streamed by the runner (runner/text/stream.py): a client connecting
# mid-reply starts from it. Kept a while after the last delta, in case the final update is late.
PARTIAL_TEXT_TTL_SECONDS = 3600


def partial_text_key(interaction_id: str) -> str:
    return f"helix:partial-text:{interaction_id}"
