"""The OpenAI-compatible API on the platform's own core: every call is a session of the caller's,
served by the same queues, runners and live path as the sessions API (there is no second way to
reach a model), and answered in OpenAI's shapes.

Fine-tuned sessions are models too, named `ft:<base model>:<session id>`: a call on one is a new
session on the base model with that session's adapter.
"""
from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Iterator

import psycopg
from redis import Redis

from controlplane.config import Config
from controlplane.errors import ApiError, BadRequest, Conflict, NotFound
from controlplane.http.forms import read_form
from controlplane.openai import store as openai_store
from controlplane.openai.input import ChatRequest, ImageRequest
from controlplane.sessions import store as sessions_store
from controlplane.sessions.events import EVENT_DELETED
from controlplane.sessions.input import NewSession
from controlplane.sessions.service import CANCELLED, SessionService, known_models
from controlplane.storage.filestore import Filestore, UserFiles
from controlplane.storage.rows import SessionRow, SessionWithInteractions
from shared.types import InteractionState, SessionMode, SessionType

FINE_TUNED_PREFIX = "ft:"


class UpstreamError(ApiError):
    """The runner could not produce the reply (after its retries)."""
    status = 502


class RequestCrashedEngine(UpstreamError):
    """The runner failed the request for good: it was the only suspect in flight at a second crash
    of the model server's engine (runner/text/engine_crashes.py). The SDKs must not send it again: each
    try could take the model server down for everyone."""
    headers = {"x-should-retry": "false"}


class ReplyTimeout(ApiError):
    """The reply was not final within HELIX_OPENAI_REPLY_SECONDS. Its session goes on: the error
    names it, so the caller can poll for the reply instead of asking again (the OpenAI SDKs obey
    x-should-retry: a retry would only queue the same work again)."""
    status = 504
    headers = {"x-should-retry": "false"}

    def __init__(self, session_id: str):
        super().__init__(f"the reply did not finish in time; it goes on in session {session_id}:"
                         f" poll GET /api/v1/sessions/{session_id} for it")


class ReplyStopped(Conflict):
    """The reply will not come: its session was deleted, or the reply cancelled, while the call
    waited for it (by the caller, through another request). Not the server's failure."""
    headers = {"x-should-retry": "false"}


def fine_tuned_id(session: SessionRow) -> str:
    return f"{FINE_TUNED_PREFIX}{session.model_name}:{session.id}"


def _created(value: Any) -> int:
    return int(value.timestamp()) if hasattr(value, "timestamp") else int(time.time())


class OpenAIService:
    def __init__(self, config: Config, sessions: SessionService, filestore: Filestore, redis: Redis):
        self.config, self.sessions, self.filestore, self.redis = config, sessions, filestore, redis

    # -- models ---------------------------------------------------------------------------

    def models(self, conn: psycopg.Connection, user: dict[str, Any]) -> list[dict[str, Any]]:
        """The base models (text and image) and every fine-tuned text session the caller owns."""
        listed = [{"id": m, "object": "model", "created": 0, "owned_by": "helix"}
                  for kind in (SessionType.TEXT, SessionType.IMAGE) for m in known_models(conn, self.config, kind)]
        for row in openai_store.fine_tuned_sessions(conn, user["id"]):
            listed.append({"id": fine_tuned_id(row), "object": "model", "created": _created(row.created),
                           "owned_by": user["id"], "parent": row.model_name})
        return listed

    def _text_model(self, conn: psycopg.Connection, user: dict[str, Any], model: str) -> tuple[str, dict[str, Any]]:
        """The base model a model id runs on, and what a session on it takes from a fine-tune
        (its adapter and training system prompt); 404 for a model the caller cannot use."""
        if model.startswith(FINE_TUNED_PREFIX):
            session_id = model.rsplit(":", 1)[-1]
            try:
                uuid.UUID(session_id)
            except ValueError:
                raise NotFound(f"the model {model[:200]!r} does not exist") from None
            source = sessions_store.get_session(conn, session_id, user["id"])
            # A fine-tune's index is its own (a clone's, its copy): its /v1 chats search it.
            knowledge = source.config.get("knowledge") if source is not None else None
            if source is None or not (source.lora_dir or knowledge) or source.type != SessionType.TEXT \
                    or fine_tuned_id(source) != model:
                raise NotFound(f"the model {model[:200]!r} does not exist or is not yours")
            finetune = {k: v for k, v in source.config.get("finetune", {}).items() if k == "system_prompt"}
            return source.model_name, {"lora_dir": source.lora_dir, "config": {
                "finetune": finetune, **({"knowledge": knowledge} if knowledge else {})}}
        if model not in known_models(conn, self.config, SessionType.TEXT):
            raise NotFound(f"the model {model[:200]!r} does not exist: GET /v1/models lists them")
        return model, {"lora_dir": "", "config": None}

    # -- text -----------------------------------------------------------------------------

    def start_chat(self, conn: psycopg.Connection, user: dict[str, Any],
                   request: ChatRequest) -> SessionWithInteractions:
        """Records the call as a session of the caller's and queues its reply."""
        base, served = self._text_model(conn, user, request.model)
        text = {**request.text, **({"system_prompt": request.system} if request.system else {})}
        return self.sessions.create_conversation(
            conn, user, model=base, turns=request.turns, text=text, lora_dir=served["lora_dir"],
            extra_config=served["config"],
            name=f"API: {request.turns[-1][1].strip()[:55]}")

    # -- images ---------------------------------------------------------------------------

    def start_image(self, conn: psycopg.Connection, user: dict[str, Any],
                    request: ImageRequest) -> SessionWithInteractions:
        form = {"mode": SessionMode.INFERENCE.value, "type": SessionType.IMAGE.value, "input": request.prompt,
                **({"model_name": request.model} if request.model else {}),
                **request.image}
        models = known_models(conn, self.config, SessionType.IMAGE)
        if request.model and request.model not in models:
            raise NotFound(f"the image model {request.model[:200]!r} does not exist: GET /v1/models lists them")
        return self.sessions.create(conn, user, read_form(NewSession, form), [])

    def image_data(self, user: dict[str, Any], path: str) -> str:
        files = UserFiles(self.filestore, user["id"])
        with files.open(path) as f:
            return base64.b64encode(f.read()).decode()


def final_reply(items: Iterator[tuple[str, Any] | None], session_id: str, interaction_id: str) -> dict[str, Any]:
    """Waits through a session's events for the reply's final state; raises what a failed reply
    means for the caller (400 when the model refused the request, 502 otherwise, 504 when the
    events ended first)."""
    for item in items:
        if item is None:
            continue
        name, data = item
        if name == EVENT_DELETED:
            raise ReplyStopped(f"session {session_id} was deleted before its reply finished")
        if name == "session":
            data = next((i for i in data["interactions"] if i["id"] == interaction_id), None)
        if name in ("session", "interaction") and data and data["id"] == interaction_id and data["finished"]:
            return checked(data)
    raise ReplyTimeout(session_id)


def checked(reply: dict[str, Any]) -> dict[str, Any]:
    """The finished reply (its view: metadata in Helix's strings), or the error it ended with."""
    if reply["state"] == InteractionState.ERROR:
        meta = reply.get("metadata") or {}
        if meta.get(CANCELLED) == "true":
            raise ReplyStopped(f"the reply was cancelled before it finished: {reply['error']}")
        if meta.get("refused_by_model") == "true":
            raise BadRequest(reply["error"] or "the model refused the request")
        if meta.get("engine_crashes", "0") != "0":
            raise RequestCrashedEngine(reply["error"])
        raise UpstreamError(reply["error"] or "the reply failed")
    return reply


def usage(reply: dict[str, Any]) -> dict[str, int]:
    counts = reply.get("usage") or {}
    prompt, completion = counts.get("prompt_tokens", 0), counts.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def choices(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """Every choice of a reply: its message is the first; more (`n`) are in its `choices`."""
    meta = reply.get("metadata") or {}
    return reply.get("choices") or [{"index": 0, "text": reply["message"], "finish_reason": meta.get("finish_reason")}]


def chat_completion(session: SessionRow, reply: dict[str, Any], model: str, completion: bool) -> dict[str, Any]:
    if completion:
        listed = [{"index": c["index"], "text": c["text"], "finish_reason": c["finish_reason"] or "stop",
                   "logprobs": None} for c in choices(reply)]
    else:
        listed = [{"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
                   "finish_reason": c["finish_reason"] or "stop", "logprobs": None} for c in choices(reply)]
    return {"id": f"{'cmpl' if completion else 'chatcmpl'}-{reply['id']}",
            "object": "text_completion" if completion else "chat.completion",
            "created": _created(session.created), "model": model, "choices": listed,
            "usage": usage(reply), "session_id": session.id}


def chunk(session: SessionRow, reply_id: str, model: str, completion: bool, delta: dict | None = None,
          finish_reason: str | None = None, usage_counts: dict | None = None) -> dict[str, Any]:
    """One streamed piece in OpenAI's chunk shape, naming its session as a whole answer does (an
    extra field, which the SDKs keep), so a streaming caller can find its session too."""
    body: dict[str, Any] = {"id": f"{'cmpl' if completion else 'chatcmpl'}-{reply_id}",
                            "object": "text_completion" if completion else "chat.completion.chunk",
                            "created": _created(session.created), "model": model, "session_id": session.id}
    if usage_counts is not None:
        body["choices"], body["usage"] = [], usage_counts
        return body
    piece = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
    if completion:
        piece["text"] = (delta or {}).get("content", "")
    else:
        piece["delta"] = delta or {}
    body["choices"] = [piece]
    return body


def stream_chunks(session: SessionRow, reply_id: str, model: str, completion: bool, include_usage: bool,
                  items: Iterator[tuple[str, Any] | None]) -> Iterator[dict[str, Any] | None]:
    """A reply's events as OpenAI chunks: the text as it streams (each piece once, by offset),
    then its finish reason and, when asked, the token counts; None for idle ticks."""
    sent = ""
    if not completion:
        yield chunk(session, reply_id, model, completion, {"role": "assistant", "content": ""})
    for item in items:
        if item is None:
            yield None
            continue
        name, data = item
        if name == EVENT_DELETED:
            raise ReplyStopped(f"session {session.id} was deleted before its reply finished")
        if name == "session":
            data = next((i for i in data["interactions"] if i["id"] == reply_id), None)
            name = "interaction"
        if name == "delta" and data.get("interaction_id") == reply_id:
            offset = data.get("offset", len(sent))
            text = data["delta"][max(0, len(sent) - offset):] if offset <= len(sent) else ""
            if text:
                sent += text
                yield chunk(session, reply_id, model, completion, {"content": text})
        elif name == "interaction" and data and data.get("id") == reply_id:
            message = data.get("message") or ""
            if len(message) > len(sent) and message.startswith(sent):  # text the deltas did not bring
                yield chunk(session, reply_id, model, completion, {"content": message[len(sent):]})
                sent = message
            if data["finished"]:
                checked(data)
                reason = (data.get("metadata") or {}).get("finish_reason") or "stop"
                yield chunk(session, reply_id, model, completion, {}, finish_reason=reason)
                if include_usage:
                    yield chunk(session, reply_id, model, completion, usage_counts=usage(data))
                return
    raise ReplyTimeout(session.id)


def image_response(session: SessionRow, reply: dict[str, Any], data: list[dict[str, str]]) -> dict[str, Any]:
    return {"created": _created(session.created), "data": data, "session_id": session.id}
