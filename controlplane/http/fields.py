"""Query arguments and single text values checked by hand, with a 400 saying what to fix: what a
declared model (http/forms.py) cannot hold, such as captions named after uploaded files."""
from __future__ import annotations

from typing import Mapping

from werkzeug.datastructures import MultiDict
from werkzeug.routing import BaseConverter

from controlplane.errors import BadRequest


def optional_int(form: Mapping[str, str], name: str, low: int, high: int,
                 multiple_of: int = 1) -> int | None:
    raw = (form.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a whole number, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}, got {value}")
    if value % multiple_of:
        raise BadRequest(f"'{name}' must be a multiple of {multiple_of}, got {value}")
    return value


def ensure_utf8(value: str, name: str) -> str:
    """Lone surrogates (possible in JSON bodies) cannot be stored or written to disk."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"'{name}' is not valid Unicode text") from None
    return value


def text_field(form: Mapping[str, str], name: str, max_chars: int, required: bool = False) -> str:
    value = form.get(name) or ""
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string")
    ensure_utf8(value, name)
    if "\x00" in value:
        raise BadRequest(f"'{name}' must not contain NUL characters")
    if required and not value.strip():
        raise BadRequest(f"missing '{name}': send the prompt as {name}=...")
    if len(value) > max_chars:
        raise BadRequest(f"'{name}' is {len(value)} characters; the limit is {max_chars}")
    return value


def refuse_nul_in_url(path: str, args: MultiDict | None) -> None:
    """NUL cannot be stored or looked up in PostgreSQL text: refuse it before any route runs
    (`args` None: a query that holds none)."""
    if "\x00" in path or (args and any("\x00" in k or "\x00" in v for k, v in args.items(multi=True))):
        raise BadRequest("the URL path and query must not contain NUL bytes (%00)")


class SessionId(BaseConverter):
    """A session id in a URL: any path segment but `chat`, which is Helix's chat route
    (POST /api/v1/sessions/chat), so that route's Allow header names its own methods only."""

    regex = r"(?!chat/?$)[^/]+"
