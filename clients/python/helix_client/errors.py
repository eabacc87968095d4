"""The server's refusals as exceptions, with its own message."""
from __future__ import annotations

from typing import Any

import httpx


class HelixError(Exception):
    """The server refused or failed a request: `status` (0: no answer), its `message` (what to
    change), and the JSON `body` it sent."""

    def __init__(self, status: int, message: str, body: Any = None):
        super().__init__(f"{status}: {message}" if status else message)
        self.status, self.message, self.body = status, message, body

    @classmethod
    def from_response(cls, response: httpx.Response) -> "HelixError":
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error  # OpenAI's shape, or Helix's
        if not isinstance(message, str):
            message = response.text[:500] or response.reason_phrase
        if response.status_code == 429:
            return RateLimited(response.status_code, message, body, retry_after(response))
        return cls(response.status_code, message, body)


class RateLimited(HelixError):
    """A 429 past the retries allowed: `retry_after` says in how many seconds to try again."""

    def __init__(self, status: int, message: str, body: Any, retry_after: float | None):
        super().__init__(status, message, body)
        self.retry_after = retry_after


def retry_after(response: httpx.Response) -> float | None:
    """The wait the server asked for: `retry-after-ms`, else `Retry-After` in seconds."""
    for header, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if value:
            try:
                return max(0.0, float(value) / scale)
            except ValueError:
                continue  # an HTTP date: use the next, or back off
    return None
