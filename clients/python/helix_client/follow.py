"""Following a session's events stream (server-sent events: `session`, `delta`, `interaction`,
`deleted`, `end`) to one interaction's end, the same way for both clients."""
from __future__ import annotations

import json
from typing import Any

from helix_client.errors import HelixError


class Follower:
    """Reads the events of `session_id` and says, for each, what text of the followed reply is
    new and whether it has ended. The reply followed is the session's last interaction."""

    def __init__(self):
        self.text = ""  # the reply's text so far
        self.interaction_id = ""
        self.session: dict[str, Any] = {}
        self.reply: dict[str, Any] = {}
        self.done = False

    def take(self, event: str, data: str, on_progress=None) -> str:
        """`read`, and `on_progress(interaction)` when the followed interaction changed."""
        new = self.read(event, data)
        if on_progress is not None and event in ("session", "interaction") and self.reply:
            on_progress(self.reply)
        return new

    def read(self, event: str, data: str) -> str:
        """Takes one event; returns the text it adds to the reply."""
        payload = json.loads(data) if data else {}
        if event == "session":
            self.session = payload
            interactions = payload.get("interactions") or []
            if interactions:
                return self._interaction(interactions[-1])
        elif event == "delta" and payload.get("interaction_id") == self.interaction_id:
            offset, delta = payload.get("offset", 0), payload.get("delta", "")
            new = delta[max(0, len(self.text) - offset):] if offset <= len(self.text) else ""
            self.text += new
            return new
        elif event == "interaction" and (not self.interaction_id or payload.get("id") == self.interaction_id):
            return self._interaction(payload)
        elif event == "deleted":  # by another request of the user's, while this one followed it
            raise HelixError(409, f"session {payload.get('session_id', '')} was deleted before its work ended",
                             payload)
        elif event == "end":
            self.done = True
        return ""

    def _interaction(self, interaction: dict[str, Any]) -> str:
        self.interaction_id = interaction.get("id", self.interaction_id)
        self.reply = interaction
        message = interaction.get("message") or ""
        new = message[len(self.text):] if message.startswith(self.text) else ""
        self.text += new
        if interaction.get("state") == "editing":  # a fine-tune waiting for its review: over until started
            self.done = True
        if interaction.get("finished"):
            self.done = True
            if interaction.get("state") == "error":
                raise HelixError(0, interaction.get("error") or "the work failed", interaction)
        return new
