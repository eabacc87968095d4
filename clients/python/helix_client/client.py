"""The clients: `Client` (sync) and `AsyncClient`, the same methods over httpx. Every request is
retried as retries.py allows (a 429 or 503 after its Retry-After); a refusal raises HelixError."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import httpx
from httpx_sse import aconnect_sse, connect_sse

from helix_client import calls
from helix_client.calls import Call
from helix_client.errors import HelixError
from helix_client.follow import Follower
from helix_client.retries import wait_before_retry
from helix_client.types import FileStoreItem, Session, SessionsList

Progress = Callable[[dict[str, Any]], None]
DEFAULT_URL = "http://127.0.0.1:8080"


def _http_options(base_url: str | None, api_key: str | None, timeout: float) -> dict[str, Any]:
    """The httpx client's settings: the server, the key, and no read timeout (a stream may idle)."""
    url = (base_url or os.environ.get("HELIX_URL") or DEFAULT_URL).rstrip("/")
    key = api_key or os.environ.get("HELIX_API_KEY") or ""
    if not key:
        raise HelixError(0, "no API key: pass api_key, set HELIX_API_KEY, or run `helix login`")
    return {"base_url": url, "headers": {"Authorization": f"Bearer {key}"},
            "timeout": httpx.Timeout(timeout, read=None)}


def _request_args(call: Call) -> dict[str, Any]:
    return {"params": call.params or None, "data": call.data, "json": call.json, "files": call.files}


def _answer(call: Call, response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise HelixError.from_response(response)
    return response.content if call.raw else response.json()


def _finished(reply: dict[str, Any]) -> bool:
    """The followed work is over, or waits for its user (a fine-tune's review)."""
    return bool(reply.get("finished")) or reply.get("state") == "editing"


class Client:
    """The platform's API. `base_url` and `api_key` default to HELIX_URL and HELIX_API_KEY."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60,
                 max_retries: int = 3, transport: httpx.BaseTransport | None = None):
        self.max_retries = max_retries
        self._http = httpx.Client(**_http_options(base_url, api_key, timeout), transport=transport)
        self.sessions = Sessions(self)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **_request_args(call))
            except httpx.TransportError as err:
                wait = wait_before_retry(call.method, attempt, self.max_retries, error=err)
                if wait is None:
                    raise HelixError(0, f"could not reach {self._http.base_url}: {err}") from err
            else:
                wait = wait_before_retry(call.method, attempt, self.max_retries, response=response)
                if wait is None:
                    return _answer(call, response)
            time.sleep(wait)
            attempt += 1

    def follow(self, session_id: str, on_progress: Progress | None = None) -> Iterator[str]:
        """Yields the new text of the session's last interaction as it streams, until it ends;
        `on_progress` gets the interaction at every change. Reconnects while it goes on."""
        follower = Follower()
        while True:
            with connect_sse(self._http, "GET", calls.events(session_id).path) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    raise HelixError.from_response(source.response)
                for event in source.iter_sse():
                    new = follower.take(event.event, event.data, on_progress)
                    if new:
                        yield new
                    if follower.done:
                        break
            if _finished(follower.reply):
                return
            follower.done = False

    def chat(self, prompt: str, *, session_id: str | None = None, model: str | None = None,
             **options: Any) -> "ChatStream":
        """A chat turn, streamed: iterate it for the reply's text as it comes. A new session
        unless `session_id` names one to continue."""
        if session_id:
            session = self.send(calls.continue_session(session_id, prompt, **options))
        else:
            session = self.send(calls.create_session(prompt, model_name=model, **options))
        return ChatStream(self, session)

    def image(self, prompt: str, *, model: str | None = None, **options: Any) -> list[bytes]:
        """Images from a prompt: waits for them, returns each PNG's bytes."""
        session = self.send(calls.create_session(prompt, type="image", model_name=model, **options))
        for _ in self.follow(session["id"]):
            pass
        reply = self.sessions.get(session["id"])["interactions"][-1]
        return [self.send(calls.download_file(path)) for path in reply.get("files") or []]

    def finetune(self, files: list[str | Path], *, type: str = "text", on_progress: Progress | None = None,
                 **options: Any) -> Session:
        """A fine-tune of documents (or captioned images with type="image"), followed to its end
        (or to its review, with manuallyReviewQuestions=True); returns the session.
        `on_upload(sent, total)` as the files go up, `on_progress(interaction)` at every change."""
        session = self.send(calls.create_session(mode="finetune", type=type, files=files, **options))
        for _ in self.follow(session["id"], on_progress):
            pass
        return self.sessions.get(session["id"])

    def files(self, path: str = "") -> list[FileStoreItem]:
        return self.send(calls.list_files(path))

    def upload(self, folder: str, paths: list[str | Path]) -> list[FileStoreItem]:
        return self.send(calls.upload_files(folder, paths))

    def download(self, path: str) -> bytes:
        return self.send(calls.download_file(path))

    def usage(self, **period: str) -> dict[str, Any]:
        """What the caller's work used (`from`, `to`, `group_by` as the API takes them)."""
        return self.send(calls.usage(**period))


class ChatStream:
    """A chat turn's reply as it streams; after the iteration `reply` is the whole interaction."""

    def __init__(self, client: Client, session: dict[str, Any]):
        self.client, self.session_id = client, session["id"]
        self.text, self.reply = "", {}
        self._parts = client.follow(self.session_id, on_progress=self._progress)

    def _progress(self, interaction: dict[str, Any]) -> None:
        self.reply = interaction

    def __iter__(self) -> Iterator[str]:
        for part in self._parts:
            self.text += part
            yield part

    def result(self) -> str:
        """Waits for the whole reply; returns its text."""
        for _ in self:
            pass
        return self.reply.get("message", self.text)


class Sessions:
    def __init__(self, client):
        self._send = client.send

    def create(self, input: str = "", **fields: Any) -> Session:
        return self._send(calls.create_session(input, **fields))

    def get(self, session_id: str) -> Session:
        return self._send(calls.get_session(session_id))

    def list(self, limit: int = 50, offset: int = 0, q: str = "") -> SessionsList:
        return self._send(calls.list_sessions(limit, offset, q))

    def cancel(self, session_id: str) -> Session:
        return self._send(calls.session_action(session_id, "cancel"))

    def restart(self, session_id: str) -> Session:
        return self._send(calls.session_action(session_id, "restart"))

    def delete(self, session_id: str) -> Session:
        return self._send(calls.session_action(session_id, "delete"))


class AsyncClient:
    """`Client`'s methods, awaited; `chat` is an async iterator of the reply's text."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60,
                 max_retries: int = 3, transport: httpx.AsyncBaseTransport | None = None):
        self.max_retries = max_retries
        self._http = httpx.AsyncClient(**_http_options(base_url, api_key, timeout), transport=transport)
        self.sessions = AsyncSessions(self)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, **_request_args(call))
            except httpx.TransportError as err:
                wait = wait_before_retry(call.method, attempt, self.max_retries, error=err)
                if wait is None:
                    raise HelixError(0, f"could not reach {self._http.base_url}: {err}") from err
            else:
                wait = wait_before_retry(call.method, attempt, self.max_retries, response=response)
                if wait is None:
                    return _answer(call, response)
            await asyncio.sleep(wait)
            attempt += 1

    async def follow(self, session_id: str, on_progress: Progress | None = None) -> AsyncIterator[str]:
        follower = Follower()
        while True:
            async with aconnect_sse(self._http, "GET", calls.events(session_id).path) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                    raise HelixError.from_response(source.response)
                async for event in source.aiter_sse():
                    new = follower.take(event.event, event.data, on_progress)
                    if new:
                        yield new
                    if follower.done:
                        break
            if _finished(follower.reply):
                return
            follower.done = False

    async def chat(self, prompt: str, *, session_id: str | None = None, model: str | None = None,
                   **options: Any) -> AsyncIterator[str]:
        if session_id:
            session = await self.send(calls.continue_session(session_id, prompt, **options))
        else:
            session = await self.send(calls.create_session(prompt, model_name=model, **options))
        async for part in self.follow(session["id"]):
            yield part

    async def finetune(self, files: list[str | Path], *, type: str = "text", on_progress: Progress | None = None,
                       **options: Any) -> Session:
        session = await self.send(calls.create_session(mode="finetune", type=type, files=files, **options))
        async for _ in self.follow(session["id"], on_progress):
            pass
        return await self.sessions.get(session["id"])

    async def usage(self, **period: str) -> dict[str, Any]:
        return await self.send(calls.usage(**period))


class AsyncSessions:
    def __init__(self, client: AsyncClient):
        self._send = client.send

    async def create(self, input: str = "", **fields: Any) -> Session:
        return await self._send(calls.create_session(input, **fields))

    async def get(self, session_id: str) -> Session:
        return await self._send(calls.get_session(session_id))

    async def list(self, limit: int = 50, offset: int = 0, q: str = "") -> SessionsList:
        return await self._send(calls.list_sessions(limit, offset, q))

    async def cancel(self, session_id: str) -> Session:
        return await self._send(calls.session_action(session_id, "cancel"))

    async def restart(self, session_id: str) -> Session:
        return await self._send(calls.session_action(session_id, "restart"))

    async def delete(self, session_id: str) -> Session:
        return await self._send(calls.session_action(session_id, "delete"))
