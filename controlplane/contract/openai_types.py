"""The answers of the OpenAI-compatible routes, in OpenAI's shapes as its SDKs read them: the
response schemas of the OpenAPI document (contract/openapi.py), checked against real answers by
the fuzzer. Fields this platform adds (a call's `session_id`) are named; others are allowed, as
the SDKs keep what they do not know."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    parent: str | None = None  # a fine-tuned session's base model


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    session_id: str  # the session the call is, to poll or continue


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    session_id: str


class Image(BaseModel):
    url: str | None = None  # the filestore viewer's, with the same key
    b64_json: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[Image]
    session_id: str
