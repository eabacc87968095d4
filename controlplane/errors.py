"""The errors a service raises for the client's mistakes: each carries the status and the message
that says what to fix. The routes answer them as JSON (http/error_handlers.py)."""
from __future__ import annotations


class ApiError(Exception):
    status = 400
    headers: dict[str, str] = {}  # sent with the error's response
    details: dict[str, object] = {}  # fields of the JSON error besides its message

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class Forbidden(ApiError):
    status = 403


class Conflict(ApiError):
    status = 409


class UpgradeRequired(ApiError):
    """A runner of another release than the control plane's (its runner messages differ)."""

    status = 426


class TooManyRequests(ApiError):
    status = 429


class InsufficientQuota(TooManyRequests):
    """A plan's limit is used up (OpenAI's insufficient_quota): the answer names the limit, and
    no SDK retries it; `retry_after` where it resets."""

    def __init__(self, message: str, limit: str, retry_after: int | None = None, **details: object):
        super().__init__(message)
        self.details = {"code": "insufficient_quota", "type": "insufficient_quota", "limit": limit, **details}
        self.headers = {**({"Retry-After": str(retry_after)} if retry_after is not None else {}),
                        "x-should-retry": "false"}


class ServiceUnavailable(ApiError):
    status = 503
