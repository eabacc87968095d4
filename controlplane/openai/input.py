"""OpenAI request bodies, each a declared model (pydantic), parsed and turned into a session's
parts: its turns and its settings. Limits that depend on the model served (its longest reply) or
on the engine's costs (a schema's grammar, stop strings) are checked after parsing, here.

What the serving engine cannot do is refused here with a 400 naming the parameter (tools, logprobs,
streams of several choices are not served), never passed on to fail on a runner later.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic_core import PydanticCustomError

from controlplane.errors import BadRequest
from controlplane.http.fields import ensure_utf8
from controlplane.http.messages import validated

M = TypeVar("M", bound=BaseModel)

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

Number = StrictInt | StrictFloat


class OpenAIBody(BaseModel):
    """OpenAI's bodies: fields this server has no use for (`user`, `metadata`, `store`, …) are let
    through unread, as the SDKs send them."""

    model_config = ConfigDict(extra="allow")


class TextPart(OpenAIBody):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(OpenAIBody):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]


class StreamOptions(OpenAIBody):
    include_usage: StrictBool | None = None


class JsonSchemaSpec(OpenAIBody):
    name: StrictStr | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(OpenAIBody):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class _TextBody(OpenAIBody):
    """What chat and plain completions share: the model and how to sample. Bounds that depend on
    the model served (its longest reply) and on the engine's costs are checked after parsing."""

    model: Annotated[StrictStr, Field(pattern=r"\S")]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(ge=0, le=1)] | None = None
    seed: Annotated[StrictInt, Field(ge=-2**63, le=2**63 - 1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_CHOICES)] | None = None
    presence_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    stop: Annotated[StrictStr, Field(min_length=1)] | Annotated[
        list[Annotated[StrictStr, Field(min_length=1)]], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    response_format: ResponseFormat | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _served(cls, body: Any) -> Any:
        if isinstance(body, dict):
            for name in _UNSUPPORTED:
                if body.get(name) not in (None, False, [], {}):
                    raise PydanticCustomError("unsupported", "'{name}' is not supported by this server", {"name": name})
        return body


class ChatCompletionBody(_TextBody):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]


class CompletionBody(_TextBody):
    """POST /v1/completions: one prompt, completed as it is (no chat template)."""

    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _plain(cls, body: Any) -> Any:
        if isinstance(body, dict) and (body.get("echo") or body.get("best_of") not in (None, 1) or body.get("suffix")):
            raise PydanticCustomError("unsupported", "'echo', 'best_of' and 'suffix' are not supported by this server")
        return body


class ImageGenerationBody(OpenAIBody):
    """POST /v1/images/generations."""

    prompt: StrictStr | list[TextPart]
    model: Annotated[StrictStr, Field(pattern=r"\S")] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=4)] | None = None
    size: StrictStr | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] | None = None
    response_format: Literal["url", "b64_json"] | None = None


@dataclass
class ChatRequest:
    model: str
    turns: list[tuple[str, str]]  # (user|assistant, text), ending with the user's
    system: str = ""
    text: dict[str, Any] = field(default_factory=dict)  # the session's text settings
    stream: bool = False
    include_usage: bool = False


def _openai_problem(path: str, error: dict[str, Any]) -> str:
    """A problem named as OpenAI's documentation spells the parameter."""
    if error["loc"] == ("model",):
        return "'model' is required, the name of a model: GET /v1/models lists them"
    return f"'{path}': {error['msg']}" if path else error["msg"]


def read_body(model: type[M], body: Any) -> M:
    return validated(model, body, not_an_object="the body must be a JSON object", describe=_openai_problem, most=3)


def _text(value: str | list[TextPart], where: str, max_chars: int) -> str:
    """A message's content: a string, or OpenAI's list of parts of which only text is served."""
    if isinstance(value, list):
        value = "\n".join(part.text for part in value)
    if "\x00" in ensure_utf8(value, where):
        raise BadRequest(f"{where} must not contain NUL characters")
    if len(value) > max_chars:
        raise BadRequest(f"{where} is {len(value)} characters; the limit is {max_chars}")
    return value


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


def check_schema_is_valid(schema: dict) -> None:
    """A 400 naming the first mistake in a schema (checked against its own metaschema), before it
    is queued: the engine would refuse it only once a runner took it."""
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as err:
        raise BadRequest(f"'response_format.json_schema.schema' is not a valid JSON Schema: {err.message[:300]}"
                         f" (at {err.json_path})") from None


def _stop(stop: str | list[str] | None, limits: EngineCostLimits) -> list[str] | None:
    stop = [stop] if isinstance(stop, str) else stop
    size = sum(len(ensure_utf8(s, "stop").encode()) for s in stop or [])
    if size > limits.stop_bytes:
        raise BadRequest(f"'stop' holds {size} bytes (UTF-8) in all; the limit is {limits.stop_bytes}"
                         " (HELIX_MAX_STOP_BYTES)")
    return stop or None


def _response_format(value: ResponseFormat | None, limits: EngineCostLimits) -> dict | None:
    if value is None or value.type == "text":
        return None
    if value.type == "json_object":
        return {"type": "json_object"}
    if value.json_schema is None:
        raise BadRequest("'response_format.json_schema.schema' must be a JSON Schema object")
    spec = value.json_schema
    check_schema_cost(spec.schema_, limits)
    check_schema_is_valid(spec.schema_)
    return {"type": "json_schema", "json_schema": {"name": (spec.name or "response")[:64],
                                                    "schema": spec.schema_, "strict": bool(spec.strict)}}


def _settings(body: _TextBody, max_reply: int, limits: EngineCostLimits) -> dict[str, Any]:
    """max_tokens, temperature and the engine's sampling parameters, checked against the model."""
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if max_tokens is not None and max_tokens > max_reply:
        name = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        raise BadRequest(f"'{name}' must be a whole number from 1 to {max_reply}, got {max_tokens}")
    sampling = {"top_p": body.top_p, "seed": body.seed, "n": body.n, "presence_penalty": body.presence_penalty,
                "frequency_penalty": body.frequency_penalty, "stop": _stop(body.stop, limits),
                "response_format": _response_format(body.response_format, limits)}
    text = {"max_tokens": max_tokens, "temperature": body.temperature,
            "sampling": {k: v for k, v in sampling.items() if v is not None}}
    return {k: v for k, v in text.items() if v not in (None, {})}


def _stream(body: _TextBody, text: dict) -> tuple[bool, bool]:
    stream = bool(body.stream)
    if stream and text.get("sampling", {}).get("n", 1) > 1:
        raise BadRequest("'n' above 1 is served without streaming only: set stream to false")
    return stream, bool(body.stream_options and body.stream_options.include_usage)


def chat_request(body: Any, max_chars: int, max_reply: int = 8192,
                 limits: EngineCostLimits = EngineCostLimits()) -> ChatRequest:
    parsed = read_body(ChatCompletionBody, body)
    system, turns = [], []
    for n, message in enumerate(parsed.messages):
        content = _text(message.content, f"messages[{n}].content", max_chars)
        if message.role in ("system", "developer"):
            system.append(content)
        elif turns and turns[-1][0] == message.role:  # two in a row: one turn, as chat templates want
            turns[-1] = (message.role, turns[-1][1] + "\n\n" + content)
        else:
            turns.append((message.role, content))
    if not turns or turns[-1][0] != "user":
        raise BadRequest("the last message must be the user's (role 'user'): it is what the model answers")
    if sum(len(t) for _, t in turns) + sum(map(len, system)) > max_chars:
        raise BadRequest(f"the messages hold more than {max_chars} characters, this server's limit")
    text = _settings(parsed, max_reply, limits)
    stream, include_usage = _stream(parsed, text)
    return ChatRequest(model=parsed.model.strip(), turns=turns, system="\n\n".join(system), text=text,
                       stream=stream, include_usage=include_usage)


def completion_request(body: Any, max_chars: int, max_reply: int = 8192,
                       limits: EngineCostLimits = EngineCostLimits()) -> ChatRequest:
    """A plain completion: the prompt is completed as it is, without a chat template."""
    parsed = read_body(CompletionBody, body)
    prompt = parsed.prompt[0] if isinstance(parsed.prompt, list) else parsed.prompt
    if not prompt:
        raise BadRequest("'prompt' must be a non-empty string (one prompt per request)")
    prompt = _text(prompt, "prompt", max_chars)
    text = {**_settings(parsed, max_reply, limits), "completion": True}
    stream, include_usage = _stream(parsed, text)
    return ChatRequest(model=parsed.model.strip(), turns=[("user", prompt)], text=text,
                       stream=stream, include_usage=include_usage)


@dataclass
class ImageRequest:
    model: str
    prompt: str
    image: dict[str, Any]
    response_format: str


def image_request(body: Any, max_chars: int) -> ImageRequest:
    parsed = read_body(ImageGenerationBody, body)
    prompt = _text(parsed.prompt, "prompt", max_chars)
    if not prompt.strip():
        raise BadRequest("'prompt' must describe the image")
    image: dict[str, Any] = {}
    if parsed.n is not None:
        image["num_images"] = parsed.n
    if parsed.size not in (None, "auto"):
        try:
            width, height = (int(v) for v in parsed.size.lower().split("x"))
        except ValueError:
            raise BadRequest(f"'size' must be WIDTHxHEIGHT, e.g. 512x512, got {parsed.size[:20]!r}") from None
        for name, value in (("width", width), ("height", height)):
            if not 64 <= value <= 2048 or value % 8:
                raise BadRequest(f"'size' {name} must be a multiple of 8 from 64 to 2048, got {value}")
        image.update(width=width, height=height)
    if parsed.seed is not None:
        image["seed"] = parsed.seed
    return ImageRequest(model=(parsed.model or "").strip(), prompt=prompt, image=image,
                        response_format=parsed.response_format or "url")
