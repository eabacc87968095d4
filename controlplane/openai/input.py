"""OpenAI request bodies checked and turned into a session's parts: its turns and its settings.

What the serving engine cannot do is refused here with a 400 naming the parameter (tools, logprobs,
streams of several choices are not served), never passed on to fail on a runner later.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from controlplane.errors import BadRequest
from controlplane.http.fields import ensure_utf8

MAX_CHOICES = 8
MAX_STOP_SEQUENCES = 4


@dataclass(frozen=True)
class EngineCostLimits:
    """What one request may ask of the engine besides its text. A JSON schema becomes a grammar
    before the first token, and with vLLM's xgrammar backend no other request moved meanwhile
    (tiny model, 2 cores: 4,000 enum entries 0.2 s; 5,000 held everyone 2.7 s, 20,000 49 s);
    every stop string is searched for in the reply after each token. Settings in config.py."""
    schema_bytes: int = 32 * 1024
    schema_enum_entries: int = 1000
    stop_bytes: int = 1024


# Parameters the engine does not serve: refused rather than silently ignored.
_UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logprobs", "top_logprobs", "audio",
                "modalities", "prediction", "logit_bias")


@dataclass
class ChatRequest:
    model: str
    turns: list[tuple[str, str]]  # (user|assistant, text), ending with the user's
    system: str = ""
    text: dict[str, Any] = field(default_factory=dict)  # the session's text settings
    stream: bool = False
    include_usage: bool = False


def _number(body: dict, name: str, low: float, high: float, whole: bool = False) -> float | int | None:
    value = body.get(name)
    if value is None:
        return None
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        raise BadRequest(f"'{name}' must be {kind} from {low} to {high}, got {json.dumps(value)[:40]}")
    return value


def _text(value: Any, where: str, max_chars: int) -> str:
    """A message's content: a string, or OpenAI's list of parts of which only text is served."""
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"{where}: only text parts ({{\"type\": \"text\", \"text\": ...}}) are served")
            parts.append(part["text"])
        value = "\n".join(parts)
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string or a list of text parts")
    if "\x00" in ensure_utf8(value, where):
        raise BadRequest(f"{where} must not contain NUL characters")
    if len(value) > max_chars:
        raise BadRequest(f"{where} is {len(value)} characters; the limit is {max_chars}")
    return value


def _body(body: Any) -> dict:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, False, [], {}):
            raise BadRequest(f"'{name}' is not supported by this server")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("'model' is required: GET /v1/models lists them")
    return body


def _count_enum_entries(schema: Any) -> int:
    """Every value an `enum` (or `const`) anywhere in the schema offers: each is a branch of the grammar."""
    count, pending = 0, [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "enum" and isinstance(value, list):
                    count += len(value)
                elif key == "const":
                    count += 1
                else:
                    pending.append(value)
        elif isinstance(node, list):
            pending.extend(node)
    return count


def check_schema_cost(schema: dict, limits: EngineCostLimits) -> None:
    """A 400 naming the limit for a schema whose grammar would hold up the engine for everyone."""
    try:
        size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    except UnicodeEncodeError:  # a lone surrogate: no database or engine takes it
        raise BadRequest("'response_format.json_schema.schema' is not valid Unicode text") from None
    if size > limits.schema_bytes:
        raise BadRequest(f"'response_format.json_schema.schema' is {size} bytes of JSON; the limit is"
                         f" {limits.schema_bytes} (HELIX_MAX_SCHEMA_BYTES): a schema is compiled before the"
                         " first token, and a large one holds up every request on the model")
    entries = _count_enum_entries(schema)
    if entries > limits.schema_enum_entries:
        raise BadRequest(f"'response_format.json_schema.schema' offers {entries} enum values in all; the limit"
                         f" is {limits.schema_enum_entries} (HELIX_MAX_SCHEMA_ENUM_ENTRIES): ask for a string"
                         " and check it against your list instead")


def _stop(value: Any, limits: EngineCostLimits) -> list[str] | None:
    stop = [value] if isinstance(value, str) else value
    if stop is not None and (not isinstance(stop, list) or len(stop) > MAX_STOP_SEQUENCES
                             or not all(isinstance(s, str) and s for s in stop)):
        raise BadRequest(f"'stop' must be a string or a list of at most {MAX_STOP_SEQUENCES} non-empty strings")
    size = sum(len(ensure_utf8(s, "stop").encode()) for s in stop or [])
    if size > limits.stop_bytes:
        raise BadRequest(f"'stop' holds {size} bytes (UTF-8) in all; the limit is {limits.stop_bytes}"
                         " (HELIX_MAX_STOP_BYTES)")
    return stop or None


def _response_format(value: Any, limits: EngineCostLimits) -> dict | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise BadRequest("'response_format.json_schema.schema' must be a JSON Schema object")
        check_schema_cost(spec["schema"], limits)
        return {"type": "json_schema", "json_schema": {"name": str(spec.get("name") or "response")[:64],
                                                        "schema": spec["schema"], "strict": bool(spec.get("strict"))}}
    raise BadRequest("'response_format.type' must be text, json_object or json_schema")


def _settings(body: dict, max_reply: int, limits: EngineCostLimits) -> dict[str, Any]:
    """max_tokens, temperature and the engine's sampling parameters, checked."""
    max_tokens = _number(body, "max_completion_tokens", 1, max_reply, whole=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", 1, max_reply, whole=True)
    sampling = {name: _number(body, name, low, high, whole) for name, low, high, whole in (
        ("top_p", 0.0, 1.0, False), ("seed", -2**63, 2**63 - 1, True), ("n", 1, MAX_CHOICES, True),
        ("presence_penalty", -2.0, 2.0, False), ("frequency_penalty", -2.0, 2.0, False))}
    sampling["stop"] = _stop(body.get("stop"), limits)
    sampling["response_format"] = _response_format(body.get("response_format"), limits)
    text = {"max_tokens": max_tokens, "temperature": _number(body, "temperature", 0.0, 2.0),
            "sampling": {k: v for k, v in sampling.items() if v is not None}}
    return {k: v for k, v in text.items() if v not in (None, {})}


def _stream(body: dict, text: dict) -> tuple[bool, bool]:
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object")
    if stream and text.get("sampling", {}).get("n", 1) > 1:
        raise BadRequest("'n' above 1 is served without streaming only: set stream to false")
    return stream, bool(options.get("include_usage"))


def chat_request(body: Any, max_chars: int, max_reply: int = 8192,
                 limits: EngineCostLimits = EngineCostLimits()) -> ChatRequest:
    body = _body(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    system, turns = [], []
    for n, message in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object with 'role' and 'content'")
        role = message.get("role")
        content = _text(message.get("content"), f"{where}.content", max_chars)
        if role in ("system", "developer"):
            system.append(content)
        elif role in ("user", "assistant"):
            if turns and turns[-1][0] == role:  # two in a row: one turn, as chat templates want
                turns[-1] = (role, turns[-1][1] + "\n\n" + content)
            else:
                turns.append((role, content))
        else:
            raise BadRequest(f"{where}.role must be system, developer, user or assistant, not {str(role)[:20]!r}")
    if not turns or turns[-1][0] != "user":
        raise BadRequest("the last message must be the user's (role 'user'): it is what the model answers")
    if sum(len(t) for _, t in turns) + sum(map(len, system)) > max_chars:
        raise BadRequest(f"the messages hold more than {max_chars} characters, this server's limit")
    text = _settings(body, max_reply, limits)
    stream, include_usage = _stream(body, text)
    return ChatRequest(model=body["model"].strip(), turns=turns, system="\n\n".join(system), text=text,
                       stream=stream, include_usage=include_usage)


def completion_request(body: Any, max_chars: int, max_reply: int = 8192,
                       limits: EngineCostLimits = EngineCostLimits()) -> ChatRequest:
    """A plain completion: the prompt is completed as it is, without a chat template."""
    body = _body(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string (one prompt per request)")
    prompt = _text(prompt, "prompt", max_chars)
    text = {**_settings(body, max_reply, limits), "completion": True}
    if body.get("echo") or body.get("best_of") not in (None, 1) or body.get("suffix"):
        raise BadRequest("'echo', 'best_of' and 'suffix' are not supported by this server")
    stream, include_usage = _stream(body, text)
    return ChatRequest(model=body["model"].strip(), turns=[("user", prompt)], text=text,
                       stream=stream, include_usage=include_usage)


@dataclass
class ImageRequest:
    model: str
    prompt: str
    image: dict[str, Any]
    response_format: str


def image_request(body: Any, max_chars: int) -> ImageRequest:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    prompt = _text(body.get("prompt"), "prompt", max_chars)
    if not prompt.strip():
        raise BadRequest("'prompt' must describe the image")
    image: dict[str, Any] = {}
    n = _number(body, "n", 1, 4, whole=True)
    if n is not None:
        image["num_images"] = n
    size = body.get("size")
    if size not in (None, "auto"):
        try:
            width, height = (int(v) for v in str(size).lower().split("x"))
        except ValueError:
            raise BadRequest(f"'size' must be WIDTHxHEIGHT, e.g. 512x512, got {str(size)[:20]!r}") from None
        for name, value in (("width", width), ("height", height)):
            if not 64 <= value <= 2048 or value % 8:
                raise BadRequest(f"'size' {name} must be a multiple of 8 from 64 to 2048, got {value}")
        image.update(width=width, height=height)
    seed = _number(body, "seed", 0, 2**32 - 1, whole=True)
    if seed is not None:
        image["seed"] = seed
    response_format = body.get("response_format") or "url"
    if response_format not in ("url", "b64_json"):
        raise BadRequest("'response_format' must be url or b64_json")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise BadRequest("'model' must be an image model's name: GET /v1/models lists them")
    return ImageRequest(model=(model or "").strip(), prompt=prompt, image=image, response_format=response_format)
