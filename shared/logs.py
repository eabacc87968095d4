"""Logging for both sides: JSON lines (python-json-logger) or plain text, with the ids of the work a
record is about, so one id can be followed from the control plane to the runner and back.

The ids live in context variables: the control plane binds `request_id` (X-Request-Id in and out)
and the `session_id` / `interaction_id` of the route for each request; a runner worker binds
`job_id`, `session_id` and `interaction_id` for each job it runs (the job's id is derived from the
interaction's: shared.jobs.job_id_for). Each thread and each gevent greenlet has its own context.
Every record carries those bound, as JSON fields or appended `[key=value ...]` in plain text.

HELIX_LOG_FORMAT chooses: `json` (the default: production, `helix runner`, gunicorn under any
launcher) or `text` (what `make run` sets, for a person reading a terminal).
"""
from __future__ import annotations

import contextvars
import logging
import os
from contextlib import contextmanager
from typing import Iterator

LOG_FORMAT_ENV = "HELIX_LOG_FORMAT"
FORMATS = ("json", "text")
ID_FIELDS = ("request_id", "session_id", "interaction_id", "job_id")
_ids: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("helix_log_ids", default={})
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def bind(**ids: str | None) -> contextvars.Token:
    """Adds ids to the current context (None or "" leaves one out); returns a token for unbind()."""
    return _ids.set({**_ids.get(), **{k: v for k, v in ids.items() if v}})


def unbind(token: contextvars.Token) -> None:
    _ids.reset(token)


@contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    token = bind(**ids)
    try:
        yield
    finally:
        unbind(token)


def current() -> dict[str, str]:
    return dict(_ids.get())


class ContextIds(logging.Filter):
    """Copies the bound ids onto each record (a field of the record's own wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _ids.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class TextWithIds(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{k}={getattr(record, k)}" for k in ID_FIELDS if getattr(record, k, None)]
        return f"{line} [{' '.join(ids)}]" if ids else line


def log_format(env: dict[str, str] | None = None) -> str:
    from shared.settings import SettingError

    value = (os.environ if env is None else env).get(LOG_FORMAT_ENV, "").strip().lower() or "json"
    if value not in FORMATS:
        raise SettingError(f"{LOG_FORMAT_ENV} must be one of {', '.join(FORMATS)}, got {value[:40]!r}")
    return value


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "text":
        return TextWithIds(_TEXT)
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         json_ensure_ascii=False)


def configure(fmt: str | None = None, level: int = logging.INFO) -> str:
    """Sets the root logger's one handler (stderr) to the chosen format; returns the format.
    Safe to call again (an app made twice in one process)."""
    fmt = fmt or log_format()
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "helix", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.helix = True  # type: ignore[attr-defined]
        handler.addFilter(ContextIds())
        root.addHandler(handler)
    handler.setFormatter(formatter(fmt))
    root.setLevel(level)
    return fmt
