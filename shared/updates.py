"""Messages a runner posts to the control plane about an interaction it is working on."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shared.types import InteractionState


@dataclass
class InteractionUpdate:
    """One report on an interaction.

    `delta` appends text to the message (streamed tokens); `message` replaces it. A `final`
    update (state complete or error) closes the interaction; later updates are refused, so a
    job that ran twice cannot overwrite the result that landed first.
    """

    runner: str = ""  # filled in by the runner's client
    state: str = InteractionState.WAITING.value
    delta: str = ""
    message: str | None = None
    progress: int | None = None
    status: str | None = None
    files: list[str] | None = None
    error: str = ""
    final: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    # Fine-tunes: the stage reached, and the adapter's folder once trained.
    data_prep_stage: str | None = None
    lora_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
