"""When to try a request again, and how long to wait first."""
from __future__ import annotations

import httpx

from helix_client.errors import retry_after

# Refused for now (a limit, a store restarting): the server stored nothing, so even a POST may go again.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# A connection that failed mid-request may have been served: only these are sent again then.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
MAX_WAIT_SECONDS = 60.0


def wait_before_retry(method: str, attempt: int, max_retries: int, response: httpx.Response | None = None,
                      error: Exception | None = None) -> float | None:
    """Seconds to wait before attempt `attempt + 1`, or None when the request is not tried again.
    A server's Retry-After is obeyed; otherwise the wait doubles from half a second."""
    if attempt >= max_retries:
        return None
    if response is not None:
        if response.status_code not in RETRY_STATUSES:
            return None
        asked = retry_after(response)
        if asked is not None:
            return min(asked, MAX_WAIT_SECONDS)
    elif not (isinstance(error, httpx.TransportError) and method.upper() in IDEMPOTENT):
        return None
    return min(0.5 * 2 ** attempt, MAX_WAIT_SECONDS)
