"""Form-field parsing that answers bad input with a 400 saying exactly what to fix."""
from __future__ import annotations

from enum import StrEnum
from typing import Mapping, TypeVar

from werkzeug.datastructures import MultiDict

from controlplane.errors import BadRequest

E = TypeVar("E", bound=StrEnum)


def required_choice(form: Mapping[str, str], name: str, enum: type[E]) -> E:
    choices = "|".join(e.value for e in enum)
    value = (form.get(name) or "").strip()
    if not value:
        raise BadRequest(f"missing '{name}': send {name}={choices}")
    try:
        return enum(value)
    except ValueError:
        raise BadRequest(f"unknown {name} {value!r}: use one of {choices}") from None


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


def optional_float(form: Mapping[str, str], name: str, low: float, high: float) -> float | None:
    raw = (form.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a number, got {raw[:40]!r}") from None
    if not low <= value <= high:  # also refuses nan
        raise BadRequest(f"'{name}' must be between {low} and {high}, got {raw[:40]}")
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


def hyperparameters(form: Mapping[str, str], bounds: Mapping[str, tuple], integers: frozenset | set) -> dict:
    """The hyperparameters given in `form`, each within its (default, low, high) bounds: a fine-tune's
    settings are checked before any work is queued."""
    chosen = {}
    for name, (_, low, high) in bounds.items():
        value = (optional_int(form, name, int(low), int(high)) if name in integers
                 else optional_float(form, name, low, high))
        if value is not None:
            chosen[name] = value
    return chosen
