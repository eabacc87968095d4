"""The usage webhook: every usage record posted to HELIX_USAGE_WEBHOOK_URL for a billing system,
at least once, by a background thread of each replica (never by a request).

A delivery is a batch: `{"object": "usage.batch", "records": [...]}`, each record with an `id`
(its interaction and stage) that stays the same on every retry, for the receiver to ignore what it
has seen. The body is signed: `X-Helix-Signature: sha256=<hex HMAC-SHA256 of the body under
HELIX_USAGE_WEBHOOK_SECRET>`. Anything but a 2xx is tried again later, each time after twice as
long (up to MAX_BACKOFF_SECONDS). Replicas take batches with SKIP LOCKED: none sends a record
another is sending."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import uuid
from typing import Any

import httpx
import psycopg

from controlplane.storage import db
from shared.background import run_every

log = logging.getLogger(__name__)
BATCH = 100
MAX_BACKOFF_SECONDS = 300
SIGNATURE_HEADER = "X-Helix-Signature"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def record_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"{row['interaction_id']}:{row['stage'] or 'reply'}", "user": row["owner"],
            "email": row["email"], "api_key_id": row["api_key_id"], "session_id": row["session_id"],
            "interaction_id": row["interaction_id"], "model": row["model"], "kind": row["kind"],
            "prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
            "images": row["images"], "width": row["width"], "height": row["height"], "steps": row["steps"],
            "runner_seconds": row["runner_seconds"], "training_tokens": row["training_tokens"],
            "stored_bytes": row["stored_bytes"], "credits": row["credits"],
            "recorded": row["recorded"].isoformat()}


def deliver_due(conn: psycopg.Connection, url: str, secret: str, http: httpx.Client) -> int:
    """Posts one batch of records due for delivery; returns how many were delivered (0 when none
    was due or the delivery failed and waits to be tried again)."""
    rows = conn.execute(
        "SELECT r.*, u.email FROM usage_records r LEFT JOIN users u ON u.id = r.owner"
        " WHERE r.delivered IS NULL AND r.next_delivery <= now() ORDER BY r.next_delivery, r.recorded"
        " LIMIT %s FOR UPDATE OF r SKIP LOCKED", (BATCH,)).fetchall()
    if not rows:
        return 0
    body = json.dumps({"object": "usage.batch", "records": [record_view(r) for r in rows]}).encode()
    keys = [[r["interaction_id"], r["stage"]] for r in rows]
    try:
        answer = http.post(url, content=body, timeout=10, headers={
            "Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, body),
            "X-Helix-Delivery": uuid.uuid4().hex})
        delivered = 200 <= answer.status_code < 300
        why = f"answered {answer.status_code}"
    except httpx.HTTPError as err:
        delivered, why = False, f"{type(err).__name__}: {err}"
    matching = "(interaction_id, stage) IN (SELECT k->>0, k->>1 FROM jsonb_array_elements(%s::jsonb) k)"
    if delivered:
        conn.execute(f"UPDATE usage_records SET delivered = now() WHERE {matching}", (json.dumps(keys),))
        return len(rows)
    log.warning("usage webhook %s: %d records wait to be sent again", why, len(rows))
    conn.execute(f"UPDATE usage_records SET delivery_attempts = delivery_attempts + 1, next_delivery = now()"
                 f" + make_interval(secs => least(%s, power(2, delivery_attempts))) WHERE {matching}",
                 (MAX_BACKOFF_SECONDS, json.dumps(keys)))
    return 0


class UsageWebhook:
    def __init__(self, app, url: str, secret: str):
        self.app, self.url, self.secret = app, url, secret
        self.http = httpx.Client()

    def run_once(self) -> int:
        """Delivers batches until none is due, or one fails; returns how many records went."""
        sent = 0
        with self.app.app_context():
            while True:
                with db.transaction() as conn:
                    batch = deliver_due(conn, self.url, self.secret, self.http)
                sent += batch
                if batch < BATCH:
                    return sent

    def start_thread(self, interval: float) -> threading.Thread:
        return run_every(interval, "helix-usage-webhook", self.run_once)
