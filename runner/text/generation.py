"""Streams a chat reply from the runner's local vLLM OpenAI-compatible server."""
from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import httpx
import requests
from httpx_sse import connect_sse


class ModelError(Exception):
    """The model refused the request (prompt too long, bad parameters): the user must change it."""


class EngineFailure(Exception):
    """vLLM failed on its side (its engine died, an internal error): not the request's fault, so
    it is worth another try once vLLM is healthy again (runner/text/engine_crashes.py says how often).
    `in_flight`: vLLM had taken the request when it failed (it may be what took the engine down);
    False when vLLM refused it at the door because its engine was already down."""

    def __init__(self, message: str, in_flight: bool):
        super().__init__(message)
        self.in_flight = in_flight


def _error_detail(error) -> tuple[str, int]:
    """vLLM's error object (a response body's or a stream chunk's): its message and HTTP code."""
    if not isinstance(error, dict):
        return str(error), 0
    code = error.get("code")
    return str(error.get("message", error)), code if isinstance(code, int) else 0


# Token counts of message contents, per model, kept by this worker process: a chat's earlier
# messages were counted on its earlier turns. Keyed by a digest, so long messages are not held twice.
_token_counts: dict[tuple[str, str], int] = {}
_COUNT_CACHE_SIZE = 8192
_context_lengths: dict[str, int] = {}


class _NoCount(Exception):
    """vLLM could not count the tokens: the chat request itself will report what is wrong."""


def _tokenize(http, base_url: str, body: dict) -> int:
    r = http.post(f"{base_url}/tokenize", json=body, timeout=(5, 60))
    if not r.ok:
        raise _NoCount(r.text[:200])
    info = r.json()
    _context_lengths[body["model"]] = info["max_model_len"]
    return info["count"]


def _content_tokens(http, base_url: str, model: str, text: str) -> int:
    key = (model, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())
    if key not in _token_counts:
        if len(_token_counts) >= _COUNT_CACHE_SIZE:
            del _token_counts[next(iter(_token_counts))]  # the oldest
        _token_counts[key] = _tokenize(http, base_url, {"model": model, "prompt": text, "add_special_tokens": False})
    return _token_counts[key]


def fit_history(base_url: str, model: str, messages: list[dict[str, str]], reply_tokens: int,
                session: requests.Session | None = None) -> list[dict[str, str]]:
    """Drops the oldest exchanges until the prompt leaves room for the reply in the context.

    A long chat must go on rather than fail once its history outgrows the model. A leading
    system message stays; the newest user message always stays (if it alone is too long, vLLM
    says so and the user sees why). Room for the reply is `reply_tokens`, at most half the context.

    In one pass, so that a long chat's turn costs what its first did (re-counting the whole
    history once per dropped exchange made it quadratic): a message's content is counted once
    per worker process, and only for the newest exchanges, as many as their contents fit (a
    lower bound of what they add to the prompt); then the chosen messages are counted once with
    the chat template. If the template's own tokens make that too long, more of the oldest
    exchanges go, each taking at least its contents' count with it.
    """
    http = session or requests
    keep = 1 if messages and messages[0]["role"] == "system" else 0
    if len(messages) - keep <= 1:
        return messages

    def count(m: dict[str, str]) -> int:
        return _content_tokens(http, base_url, model, m["content"])

    try:
        used = sum(count(m) for m in messages[:keep]) + count(messages[-1])
        limit = _context_lengths[model]
        budget = limit - min(reply_tokens, limit // 2)
        start = len(messages) - 1  # the first message kept after the system message
        while start - 2 >= keep:  # one user turn and its reply at a time, newest first
            exchange = count(messages[start - 2]) + count(messages[start - 1])
            if used + exchange > budget:
                break
            used, start = used + exchange, start - 2
        kept = messages[:keep] + messages[start:]
        over = _tokenize(http, base_url, {"model": model, "messages": kept}) - budget
        while over > 0 and start < len(messages) - 1:
            over -= count(messages[start]) + count(messages[start + 1])
            start += 2
    except _NoCount:
        return messages
    return messages[:keep] + messages[start:]


@dataclass
class Generation:
    """What a streamed request produced besides its first choice's text: every choice's text and
    finish reason (a request may ask for `n` of them) and the token counts."""

    texts: dict[int, str] = field(default_factory=dict)
    finish_reasons: dict[int, str] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    # With `continuous_usage`: (characters of the first choice, completion tokens) after each chunk,
    # so a reply cut short knows how many tokens the text it kept took.
    marks: list[tuple[int, int]] = field(default_factory=list)

    def tokens_for(self, chars: int) -> int:
        """Completion tokens that produced the first `chars` characters of the first choice."""
        return max((tokens for length, tokens in self.marks if length <= chars), default=0)


# A streamed reply: connected and the request sent within 5 s each, then at most 600 s between two
# reads (requests' (5, 600) did the same: urllib3 sends a request under the connect timeout).
STREAM_TIMEOUT = httpx.Timeout(5, read=600)


def vllm_client(pool_size: int = 1) -> httpx.Client:
    """The HTTP client a worker process streams vLLM's replies with, shared by its threads (an
    httpx client is safe to send from several at once). It keeps up to `pool_size` connections
    alive, as a text worker runs that many jobs at once, and opens as many as are asked for (a
    requests session's pool did not wait for a free connection either)."""
    return httpx.Client(timeout=STREAM_TIMEOUT, limits=httpx.Limits(
        max_connections=None, max_keepalive_connections=max(10, pool_size)))


class Reply:
    """A streamed reply's HTTP response, as `stream_chat` hands it to `on_response`: another
    thread may abort it (runner/text/abortable.py)."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self._lock = threading.Lock()
        self._open = True

    def abort(self) -> None:
        """Shuts the response's socket: a read blocked on it returns at once (closing the response
        would not wake it), and vLLM sees its client leave and aborts the request. Does nothing once
        the reply has ended: its connection may be back in the pool, serving another request."""
        with self._lock:
            if not self._open:
                return
            stream = self.response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed

    def _ended(self) -> None:
        with self._lock:
            self._open = False


def stream_chat(base_url: str, model: str, messages: list[dict[str, str]] | None, *,
                max_tokens: int | None, temperature: float | None, extra: dict | None = None,
                session: httpx.Client | None = None, prompt: str | None = None,
                generation: Generation | None = None, continuous_usage: bool = False,
                on_response: Callable[[Reply], None] | None = None) -> Iterator[str]:
    """Yields the first choice's text as it streams: a chat reply to `messages`, or with `prompt`
    a plain completion of it. `generation` collects all choices, finish reasons and usage;
    `on_response` is given the reply as soon as its response starts (to abort it from another
    thread). `session`: the client to send it with (`vllm_client`); a client of its own if none.
    `continuous_usage`: vLLM counts the tokens with every chunk (`generation.marks`).
    A connection that fails or drops raises httpx's error (an `httpx.TransportError`)."""
    usage = {"include_usage": True, **({"continuous_usage_stats": True} if continuous_usage else {})}
    body: dict = {**(extra or {}), "model": model, "stream": True, "stream_options": usage}
    if prompt is not None:
        body["prompt"], path = prompt, "/v1/completions"
    else:
        body["messages"], path = messages, "/v1/chat/completions"
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    gen = generation if generation is not None else Generation()
    with contextlib.ExitStack() as scope:
        http = session or scope.enter_context(vllm_client())
        events = scope.enter_context(connect_sse(http, "POST", f"{base_url}{path}", json=body, timeout=STREAM_TIMEOUT))
        r = events.response
        reply = Reply(r)
        scope.callback(reply._ended)  # before the response closes and its connection is let go
        if on_response is not None:
            on_response(reply)
        if r.status_code >= 400:
            r.read()  # a streamed response's body is read on demand
        if r.status_code >= 500:
            raise EngineFailure(f"the model server answered {r.status_code}: {r.text[:300]}", in_flight=False)
        if 400 <= r.status_code < 500:
            try:
                detail, _ = _error_detail(r.json().get("error", {}))
            except (ValueError, AttributeError):
                detail = r.text[:500]
            raise ModelError(str(detail) or f"model refused the request ({r.status_code})")
        r.raise_for_status()
        for event in events.iter_sse():
            if not event.data:
                continue
            if event.data == "[DONE]":
                return
            chunk = event.json()
            if chunk.get("error"):
                # vLLM reports its own failures mid-stream too (code 500: "EngineCore encountered
                # an issue" when its engine died): those are the server's, not the request's.
                detail, code = _error_detail(chunk["error"])
                if code >= 500:
                    raise EngineFailure(f"the model server failed while answering: {detail}", in_flight=True)
                raise ModelError(detail)
            if chunk.get("usage"):
                gen.usage = {k: v for k, v in chunk["usage"].items() if isinstance(v, int)}
            for choice in chunk.get("choices", []):
                index = choice.get("index", 0)
                text = choice.get("text") if prompt is not None else (choice.get("delta") or {}).get("content")
                if choice.get("finish_reason"):
                    gen.finish_reasons[index] = choice["finish_reason"]
                if text:
                    gen.texts[index] = gen.texts.get(index, "") + text
                if index == 0 and continuous_usage and gen.usage.get("completion_tokens") is not None:
                    gen.marks.append((len(gen.texts.get(0, "")), gen.usage["completion_tokens"]))
                if text and index == 0:
                    yield text
