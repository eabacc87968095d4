"""The runner's HTTP client for the control plane: registration and interaction updates.

Progress and streamed text are best effort and throttled; reports, uploads and downloads are
retried on the HTTP adapter (urllib3's Retry, http_session.DELIVERY_RETRY); the final update is
retried until it lands (or the control plane says the interaction is already closed).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import requests

from runner.control_plane.http_session import DELIVERY_RETRY, pooled_session
from shared.runners import RUNNER_HEADER
from shared.wire import (WIRE_VERSION, WIRE_VERSION_HEADER, InteractionUpdate, Message, Registered, Registration,
                         RetrievalRequest)

log = logging.getLogger(__name__)


class Gone(Exception):
    """The interaction was deleted, or an earlier attempt already finished it: stop working on it."""


class ControlPlane:
    def __init__(self, api_url: str, token: str, runner_id: str, pool_size: int = 1):
        self.api_url = api_url.rstrip("/")
        self.runner_id = runner_id
        self.http = pooled_session(pool_size)  # best effort: progress, streamed text
        self.delivery = pooled_session(pool_size, retry=DELIVERY_RETRY)  # what must land
        for session in (self.http, self.delivery):
            session.headers["Authorization"] = f"Bearer {token}"
            session.headers[RUNNER_HEADER] = runner_id  # the control plane checks this runner holds the job
            session.headers[WIRE_VERSION_HEADER] = str(WIRE_VERSION)  # it refuses another version's messages

    def register(self, models: dict[str, list[str]], info: dict[str, Any] | None = None,
                 state: dict[str, Any] | None = None, forgotten_seen: int = 0) -> Registered:
        """Announces the runner (again): its models, static facts (`info`) and its state now, and
        how far it has deleted forgotten adapters; the answer names more to delete."""
        registration = Registration(runner_id=self.runner_id, models=models, info=info or {}, state=state or {},
                                    forgotten_seen=forgotten_seen)
        r = self.http.post(f"{self.api_url}/api/v1/runner/register", timeout=10, json=registration.to_wire())
        r.raise_for_status()
        return Registered.model_validate(r.json())

    def _post_update(self, session_id: str, interaction_id: str, update: InteractionUpdate,
                     timeout: float) -> requests.Response:
        url = f"{self.api_url}/api/v1/runner/sessions/{session_id}/interactions/{interaction_id}"
        return self.http.post(url, json=update.to_wire(), timeout=timeout)

    def update(self, session_id: str, interaction_id: str, update: InteractionUpdate) -> bool:
        """Best effort: a lost progress report is replaced by the next one. Raises Gone when the
        control plane says there is nothing to work on any more."""
        update.runner = self.runner_id
        try:
            r = self._post_update(session_id, interaction_id, update, timeout=5)
        except requests.RequestException as err:
            log.warning("update for %s not delivered: %s", interaction_id, err)
            return False
        if r.status_code in (404, 409):
            raise Gone(interaction_id)
        return r.ok

    def upload_result(self, session_id: str, interaction_id: str, name: str, data: bytes) -> str:
        """Stores an output file through the control plane; returns its path in the owner's files."""
        url = f"{self.api_url}/api/v1/runner/sessions/{session_id}/interactions/{interaction_id}/files"

        r = self.delivery.post(url, files={"file": (name, data)}, timeout=60)
        if r.status_code in (404, 409):
            raise Gone(interaction_id)
        r.raise_for_status()
        return r.json()["path"]

    def download(self, session_id: str, path: str) -> bytes:
        """A file of the session (an uploaded input) fetched through the control plane."""
        url = f"{self.api_url}/api/v1/runner/sessions/{session_id}/files"

        r = self.delivery.get(url, params={"path": path}, timeout=120)
        r.raise_for_status()
        return r.content

    def report(self, session_id: str, interaction_id: str, what: str, body: Message | None = None,
               method: str = "POST") -> Any:
        """A fine-tune report that must land (`document`, `chunk`, `prepared`, `metrics`), or a
        read (`pairs`), retried on transient failures; Gone once the interaction is over."""
        url = f"{self.api_url}/api/v1/runner/sessions/{session_id}/interactions/{interaction_id}/finetune/{what}"

        r = self.delivery.request(method, url, json=body.to_wire() if body is not None else None, timeout=60)
        if r.status_code in (404, 409):
            raise Gone(interaction_id)
        r.raise_for_status()
        return r.json()

    def retrieve(self, session_id: str, interaction_id: str, request: RetrievalRequest) -> list[list[dict[str, Any]]]:
        """The best chunks for each question of `request`, from the index the session learns from."""
        url = f"{self.api_url}/api/v1/runner/sessions/{session_id}/interactions/{interaction_id}/retrieve"
        r = self.delivery.post(url, json=request.to_wire(), timeout=30)
        if r.status_code in (404, 409):
            raise Gone(interaction_id)
        r.raise_for_status()
        return r.json()["results"]

    def finish(self, session_id: str, interaction_id: str, update: InteractionUpdate,
               deadline_seconds: float = 600) -> None:
        """Delivers the final update, retrying with backoff; raises if it never lands."""
        update.runner = self.runner_id
        update.final = True
        delay, started = 0.2, time.monotonic()
        while True:
            try:
                r = self._post_update(session_id, interaction_id, update, timeout=15)
                if r.ok or r.status_code in (404, 409):  # landed, or nothing left to finish
                    return
                if 400 <= r.status_code < 500 and r.status_code != 429:
                    raise RuntimeError(f"control plane refused the final update: {r.status_code} {r.text[:200]}")
            except requests.RequestException as err:
                log.warning("final update for %s not delivered yet: %s", interaction_id, err)
            if time.monotonic() - started > deadline_seconds:
                raise RuntimeError(f"final update for {interaction_id} never landed")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
