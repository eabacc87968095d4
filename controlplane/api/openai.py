"""The OpenAI-compatible routes (`/v1/...`, for the official SDKs with `base_url` pointed here) and
Helix's `POST /api/v1/sessions/chat`, which answers in the same shapes.

Errors under /v1 leave in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with
the status the SDKs map to their exception classes (400, 401, 404, 409, 429)."""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from flask import Blueprint, Response, current_app, g, jsonify, request

from controlplane.accounts.auth import require_user
from controlplane.contract import openai_types
from controlplane.contract.operations import EVENTS, IMAGE_MODEL, JSON, TEXT_MODEL, documented
from controlplane.errors import ApiError, BadRequest
from controlplane.http import event_stream
from controlplane.http.forms import read_form
from controlplane.http.messages import parsed
from controlplane.openai import input as openai_input
from controlplane.openai.chat import chat_completion, final_reply, image_response, stream_chunks
from controlplane.openai.input import ChatCompletionBody, CompletionBody, ImageGenerationBody
from controlplane.sessions import events
from controlplane.sessions import store as sessions_store
from controlplane.sessions.input import ContinueChat, HelixChat
from controlplane.sessions.service import known_models
from controlplane.sessions.views import session_view
from controlplane.storage import db
from controlplane.storage.rows import SessionRow, SessionWithInteractions
from controlplane.usage import admission
from controlplane.usage.admission import Work
from shared.types import SessionType

bp = Blueprint("openai", __name__, url_prefix="/v1")
helix_chat = Blueprint("helix_chat", __name__, url_prefix="/api/v1/sessions")

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
                429: "rate_limit_error"}


def openai_error(message: str, status: int, code: str | None = None) -> dict[str, Any]:
    return {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": None,
            "code": code if code else None if status < 500 else "server_error"}


@bp.after_app_request
def _openai_error_shape(response: Response) -> Response:
    """Every error under /v1 (from a route, auth, body reading or Flask) in OpenAI's shape."""
    if request.path.startswith("/v1/") and response.status_code >= 400 and response.is_json:
        body = response.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            code = body.get("code") if isinstance(body.get("code"), str) else None
            error = openai_error(body["error"], response.status_code, code)
            if isinstance(body.get("type"), str):  # a kind of error OpenAI names apart (insufficient_quota)
                error["type"] = body["type"]
            response.set_data(json.dumps({"error": error}))
    return response


def _service():
    return current_app.extensions["openai_service"]


def _body() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("the body must be JSON (Content-Type: application/json)")
    return body


def _reader(app, session_id: str, owner: str) -> Callable[[], dict | None]:
    def read() -> dict | None:
        with app.app_context(), db.transaction() as conn:
            found = sessions_store.get_session_with_interactions(conn, session_id, owner)
        return session_view(*found) if found else None
    return read


def _reply_events(app, session: SessionRow):
    """The session's live events until its reply is final or HELIX_OPENAI_REPLY_SECONDS pass."""
    return events.session_events(app.extensions["subscriptions"], session.id, _reader(app, session.id, g.user["id"]),
                                 app.config["HELIX"].openai_reply_seconds)


@contextmanager
def _call_slot() -> Iterator[Callable[[], None]]:
    """One of the caller's live-stream slots for a call, taken before its session is made, so a
    call refused with 429 or 503 stores and queues nothing; given back here only if the session
    could not be made (otherwise whoever answers the call gives it back)."""
    release = current_app.extensions["event_streams"].acquire(
        g.user["id"], plan_limit=g.user["plan_limits"].event_streams)
    try:
        yield release
    except BaseException:
        release()
        raise


def _answer(started: SessionWithInteractions, model: str, completion: bool, stream: bool, include_usage: bool,
            release: Callable[[], None]):
    """Waits for the session's reply, or streams it, holding the call's stream slot meanwhile
    (each waits on the session's live channel) and giving it back at the end."""
    app = current_app._get_current_object()
    session, interactions = started
    reply_id = interactions[-1].id
    items = _reply_events(app, session)
    if not stream:
        try:
            reply = final_reply(items, session.id, reply_id)
        finally:
            release()
        return jsonify(chat_completion(session, reply, model, completion))

    def chunks():
        try:
            for piece in stream_chunks(session, reply_id, model, completion, include_usage, items):
                yield event_stream.KEEP_ALIVE if piece is None else event_stream.message(piece)
            yield event_stream.message("[DONE]")
        except ApiError as err:  # the reply failed after the stream began: say so in the stream
            yield event_stream.message({"error": openai_error(err.message, err.status)})

    return event_stream.response(chunks(), release)


def _text_call(parse, completion: bool):
    config = current_app.config["HELIX"]
    limits = openai_input.EngineCostLimits(schema_bytes=config.max_schema_bytes, stop_bytes=config.max_stop_bytes,
                                           schema_enum_entries=config.max_schema_enum_entries)
    body = _body()
    call = parse(body, config.max_input_chars, limits=limits)
    admission.admit(Work.TEXT, body)
    with _call_slot() as release, db.transaction() as conn:
        started = _service().start_chat(conn, g.user, call)
    return _answer(started, call.model, completion, call.stream, call.include_usage, release)


@bp.get("/models")
@require_user
@documented("The models the caller may use: the base models and their fine-tunes", errors="openai",
            responses={200: openai_types.ModelList})
def list_models():
    with db.transaction() as conn:
        return jsonify(object="list", data=_service().models(conn, g.user))


@bp.get("/models/<path:model_id>")
@require_user
@documented("One model", errors="openai", responses={200: openai_types.Model})
def get_model(model_id: str):
    with db.transaction() as conn:
        found = next((m for m in _service().models(conn, g.user) if m["id"] == model_id), None)
    if found is None:
        return jsonify(error=f"the model {model_id[:200]!r} does not exist: GET /v1/models lists them"), 404
    return jsonify(found)


@bp.post("/chat/completions")
@require_user
@documented("A chat completion (OpenAI's API): the answer, or with stream=true its chunks as server-sent events",
            body=ChatCompletionBody, body_types=(JSON,), errors="openai", content=(JSON, EVENTS),
            responses={200: openai_types.ChatCompletion},
            examples={"chat": {"model": TEXT_MODEL, "max_tokens": 32,
                               "messages": [{"role": "user", "content": "Write a haiku about the sea."}]}})
def chat_completions():
    return _text_call(openai_input.chat_request, completion=False)


@bp.post("/completions")
@require_user
@documented("A text completion (OpenAI's API), streamed or not", body=CompletionBody, body_types=(JSON,),
            errors="openai", content=(JSON, EVENTS), responses={200: openai_types.Completion},
            examples={"completion": {"model": TEXT_MODEL, "prompt": "The lighthouse keeper", "max_tokens": 32}})
def completions():
    return _text_call(openai_input.completion_request, completion=True)


@bp.post("/images/generations")
@require_user
@documented("Images from a prompt (OpenAI's API)", body=ImageGenerationBody, body_types=(JSON,), errors="openai",
            responses={200: openai_types.ImagesResponse},
            examples={"image": {"model": IMAGE_MODEL, "prompt": "a red lighthouse at dusk", "seed": 7}})
def image_generations():
    config = current_app.config["HELIX"]
    body = _body()
    call = openai_input.image_request(body, config.max_input_chars)
    admission.admit(Work.IMAGE, body)
    with _call_slot() as release, db.transaction() as conn:
        session, interactions = _service().start_image(conn, g.user, call)
    app = current_app._get_current_object()
    try:
        reply = final_reply(_reply_events(app, session), session.id, interactions[-1].id)
    finally:
        release()
    if call.response_format == "b64_json":
        data = [{"b64_json": _service().image_data(g.user, path)} for path in reply["files"]]
    else:  # the file through the filestore viewer, with the same key
        data = [{"url": f"{request.host_url}api/v1/filestore/viewer/{path}"} for path in reply["files"]]
    return jsonify(image_response(session, reply, data))


@helix_chat.post("/chat")
@require_user
@documented("Helix's chat route: a new chat session or the next turn of one, answered in OpenAI's shape",
            body=HelixChat, body_types=(JSON,), content=(JSON, EVENTS), responses={200: openai_types.ChatCompletion},
            examples={"chat": {"model": TEXT_MODEL, "messages": [
                {"role": "user", "content": {"content_type": "text", "parts": ["Write a haiku about the sea."]}}]}})
def helix_session_chat():
    """Helix's chat route: `messages` of `{"role", "content": {"content_type": "text", "parts": [...]}}`,
    an optional `system` and `model`, and `session_id` to continue a session of the caller's."""
    body = _body()
    chat = parsed(HelixChat, body, "chat")
    admission.admit(Work.TEXT, body)
    messages, stream = chat.openai_messages(), chat.stream
    config = current_app.config["HELIX"]
    session_id = chat.session_id or ""
    if session_id:
        call = openai_input.chat_request({"model": "-", "messages": messages, "stream": stream},
                                         config.max_input_chars)
        with _call_slot() as release, db.transaction() as conn:
            continued = current_app.extensions["session_service"].continue_chat(
                conn, g.user, session_id, read_form(ContinueChat, {"input": call.turns[-1][1]}), text_only=True)
        return _answer(continued, continued[0].model_name, False, call.stream, False, release)
    with db.transaction() as conn:
        model = chat.model or next(iter(known_models(conn, current_app.config["HELIX"], SessionType.TEXT)), "")
    call = openai_input.chat_request({"model": model, "messages": messages, "stream": stream}, config.max_input_chars)
    with _call_slot() as release, db.transaction() as conn:
        started = _service().start_chat(conn, g.user, call)
    return _answer(started, call.model, False, call.stream, False, release)
