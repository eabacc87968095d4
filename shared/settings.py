"""Reading settings from environment variables, for both sides: a bad value stops the process
with a line that names the variable, not a traceback."""
from __future__ import annotations

import json
from typing import Any, Mapping


class SettingError(SystemExit):
    pass


def _number(env: Mapping[str, str], name: str, default, parse, kind: str):
    raw = env.get(name, "").strip()
    try:
        return parse(raw) if raw else default
    except ValueError:
        raise SettingError(f"{name} must be {kind}, got {raw!r}") from None


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int, "a whole number")


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, "a number")


def env_json_object(env: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = env.get(name, "").strip()
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise SettingError(f"{name} must be a JSON object, got {raw[:200]!r}")
    return value
