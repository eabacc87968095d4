"""Server-sent events, written one way for both APIs: Helix's session events and OpenAI's
streamed chunks (text/event-stream, never cached or buffered by a proxy)."""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator

from flask import Response, stream_with_context

KEEP_ALIVE = ": keep-alive\n\n"  # a comment: an idle stream notices a client that left


def message(data: Any, event: str | None = None) -> str:
    """One event: `data` as JSON (a string as it is, as OpenAI's `[DONE]`), named if `event`."""
    payload = data if isinstance(data, str) else json.dumps(data, default=str)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def response(events: Iterator[str], release: Callable[[], None]) -> Response:
    """The stream as a response; `release` runs once it ends or the client leaves, and also when
    the body never started (a HEAD request)."""
    def body() -> Iterator[str]:
        try:
            yield from events
        finally:
            release()

    answer = Response(stream_with_context(body()), mimetype="text/event-stream",
                      headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    answer.call_on_close(release)
    return answer
