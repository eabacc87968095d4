"""Reading settings from environment variables, for both sides: a bad value stops the process
with a line that names the variable, not a traceback."""
from __future__ import annotations

import json
from typing import Any, Mapping


class SettingError(SystemExit):
    pass


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SettingError(f"{name} must be a whole number, got {raw!r}") from None


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SettingError(f"{name} must be a number, got {raw!r}") from None


def env_json_object(env: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = env.get(name, "").strip()
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise SettingError(f"{name} must be a JSON object, got {raw[:200]!r}")
    return value
