"""The state a runner reports every few seconds with its registration: what it holds and does now.

The runner builds it (runner/state/report.py), the control plane checks it with `problem()` and
stores it on the runner's row for listings, the dashboard and metrics. It is separate from the
registration's `info` (static facts the scheduler reads): this one changes from report to report.

    {"version": "0.1.0",                        the runner's package version
     "report_interval": 5.0,                    seconds between its reports
     "models": [{"type": "text", "name": "helix/tiny-chat", "state": "loaded"}],
     "adapters": {"text": ["lora-…"], "image": ["lora-…"]},   loaded or cached, at most 64 each
     "memory": {"host": {"total_bytes": …, "free_bytes": …},
                "gpu": [{"index": 0, "name": "…", "total_bytes": …, "free_bytes": …}]},  no GPU: no "gpu"
     "jobs": {"text-inference": 2, "text-finetune": 0},        running now, by kind of work
     "workers": {"text-inference": 64, "text-finetune": 1}}    listening, by kind of work

Every part is optional: a runner reports what it can measure cheaply.
"""
from __future__ import annotations

import json
from typing import Any

MODEL_STATES = ("loaded", "starting", "down")
MAX_ADAPTERS = 64
MAX_GPUS = 16
MAX_BYTES = 16 * 1024  # the whole report as JSON
_MAX_COUNT = 10**6
_MAX_MEMORY = 2**60
_KEYS = {"version", "report_interval", "models", "adapters", "memory", "jobs", "workers"}
_MEMORY = ("total_bytes", "free_bytes")


def _name(value: Any, limit: int = 200) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()


def _whole(value: Any, high: int) -> bool:
    return type(value) is int and 0 <= value <= high


def _memory(value: Any, where: str) -> str | None:
    if not isinstance(value, dict) or not set(value) <= {*_MEMORY, "index", "name"}:
        return f"state {where} must be an object of {', '.join(_MEMORY)}"
    for key in _MEMORY:
        if key in value and not _whole(value[key], _MAX_MEMORY):
            return f"state {where}.{key} must be a whole number of bytes"
    if "index" in value and not _whole(value["index"], MAX_GPUS):
        return f"state {where}.index must be a whole number below {MAX_GPUS}"
    if "name" in value and not _name(value["name"]):
        return f"state {where}.name must be a string of at most 200 characters"
    return None


def _counts(value: Any, where: str) -> str | None:
    if not isinstance(value, dict) or len(value) > 16 or not all(
            _name(k, 64) and _whole(v, _MAX_COUNT) for k, v in value.items()):
        return f"state {where} must map at most 16 kinds of work (names of at most 64 characters) to counts"
    return None


def problem(state: Any) -> str | None:
    """What is wrong with a reported state (None: nothing). Bounded and plain: small objects of
    known keys, numbers, short strings."""
    if not isinstance(state, dict):
        return "state must be an object"
    if len(json.dumps(state)) > MAX_BYTES:
        return f"state must be at most {MAX_BYTES} bytes of JSON"
    unknown = set(state) - _KEYS
    if unknown:
        return f"state has unknown fields: {', '.join(sorted(unknown))[:200]} (known: {', '.join(sorted(_KEYS))})"
    if "version" in state and not _name(state["version"], 64):
        return "state version must be a string of at most 64 characters"
    interval = state.get("report_interval")
    if interval is not None and (type(interval) not in (int, float) or not 0 < interval <= 86400):
        return "state report_interval must be a number of seconds from 0 to 86400"
    models = state.get("models", [])
    if not isinstance(models, list) or len(models) > 32 or not all(
            isinstance(m, dict) and set(m) <= {"type", "name", "state"} and _name(m.get("type"), 16)
            and _name(m.get("name")) and m.get("state", "loaded") in MODEL_STATES for m in models):
        return ("state models must be a list of at most 32 {type, name, state} objects, state one of "
                + ", ".join(MODEL_STATES))
    adapters = state.get("adapters", {})
    if not isinstance(adapters, dict) or not set(adapters) <= {"text", "image"} or not all(
            isinstance(v, list) and len(v) <= MAX_ADAPTERS and all(_name(a) for a in v) for v in adapters.values()):
        return f"state adapters must map text and image to lists of at most {MAX_ADAPTERS} names"
    memory = state.get("memory", {})
    if not isinstance(memory, dict) or not set(memory) <= {"host", "gpu"}:
        return "state memory must be an object with host and gpu"
    if "host" in memory and (found := _memory(memory["host"], "memory.host")):
        return found
    gpus = memory.get("gpu", [])
    if not isinstance(gpus, list) or len(gpus) > MAX_GPUS:
        return f"state memory.gpu must be a list of at most {MAX_GPUS} devices"
    for n, gpu in enumerate(gpus):
        if found := _memory(gpu, f"memory.gpu[{n}]"):
            return found
    for key in ("jobs", "workers"):
        if key in state and (found := _counts(state[key], key)):
            return found
    return None
