"""A reply's tokens on their way to clients: through Redis, not through the control plane.

Every few tokens go out at once to the session's live channel and onto the reply's text so far
(one atomic MULTI: APPEND and PUBLISH), so a client that connects mid-reply reads the text so far
and then takes only the deltas past it (each carries its offset): nothing doubled, nothing
missed. Status polls read that text too (controlplane/api/sessions.py), so the control plane
stores it only now and then (`persist_interval`, 30 s) and always at the end: a store is an HTTP
request and a PostgreSQL commit, and at one a second each, 64 replies in flight cost the machine
a fifth of the CPU vLLM generates with (bench/README.md, P3).
"""
from __future__ import annotations

import json
import logging
import time

from redis import Redis

from runner.control_plane.client import ControlPlane
from shared.types import InteractionState
from shared.updates import EVENT_DELTA, PARTIAL_TEXT_TTL_SECONDS, partial_text_key, session_channel
from shared.wire import InteractionUpdate

log = logging.getLogger(__name__)


def clear_partial_text(redis: Redis, interaction_id: str) -> None:
    """A new attempt starts from nothing: forget what an interrupted one streamed."""
    try:
        redis.delete(partial_text_key(interaction_id))
    except Exception as err:
        log.warning("could not clear the streamed text of %s: %s", interaction_id, err)


class TextStream:
    """Collects streamed tokens, publishes them every `interval` seconds and has the control
    plane store the text every `persist_interval` seconds."""

    def __init__(self, client: ControlPlane, redis: Redis, session_id: str, interaction_id: str,
                 interval: float, persist_interval: float):
        self.client, self.redis = client, redis
        self.session_id, self.interaction_id = session_id, interaction_id
        self.interval, self.persist_interval = interval, persist_interval
        self.text = ""
        self._published = 0  # characters of `text` already published
        self._last_publish = self._last_persist = time.monotonic()

    def add(self, delta: str) -> None:
        self.text += delta
        now = time.monotonic()
        if now - self._last_publish >= self.interval:
            self.publish()
        if now - self._last_persist >= self.persist_interval:
            self.persist()

    def publish(self) -> None:
        """Best effort: what fails to go out now goes out with the next delta."""
        pending = self.text[self._published:]
        self._last_publish = time.monotonic()
        if not pending:
            return
        event = {"event": EVENT_DELTA, "data": {"interaction_id": self.interaction_id,
                                                "delta": pending, "offset": self._published}}
        key = partial_text_key(self.interaction_id)
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.append(key, pending)
                pipe.expire(key, PARTIAL_TEXT_TTL_SECONDS)
                pipe.publish(session_channel(self.session_id), json.dumps(event))
                pipe.execute()
        except Exception as err:
            log.warning("delta for %s not published: %s", self.interaction_id, err)
            return
        self._published = len(self.text)

    def persist(self) -> None:
        """Publishes what is pending first, so the stored text never runs ahead of the deltas."""
        self.publish()
        self._last_persist = time.monotonic()
        self.client.update(self.session_id, self.interaction_id,
                           InteractionUpdate(message=self.text, state=InteractionState.WAITING.value))
