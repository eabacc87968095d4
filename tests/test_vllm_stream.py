"""How the runner reads a streamed reply from vLLM (runner/text/generation.py, stream_chat), against
a stand-in that answers as vLLM's OpenAI-compatible server does: server-sent events over a chunked
response. No model: what is checked is the reading, the errors it maps and the abort from another
thread (the real server's side of these is in test_text_e2e, test_engine_crashes, test_session_control)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from runner.job_watch import JobWatch
from runner.text.abortable import abortable
from runner.text.generation import EngineFailure, Generation, ModelError, stream_chat, vllm_client


class VllmStandIn(ThreadingHTTPServer):
    """Answers each POST as the `scenario` in its body says; keeps the bodies, and notes when a
    client left a reply it was still sending."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[str, dict]] = []
        self.client_left = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def _chat_chunk(index: int, content: str | None = None, finish: str | None = None) -> dict:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": index, "delta": {"content": content} if content is not None else {},
                         "finish_reason": finish}]}


USAGE = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9, "prompt_tokens_details": None}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - http.server's spelling
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.received.append((self.path, body))
        scenario = body.get("scenario", "chat")
        if scenario in ("busy", "refused"):
            status, error = (503, "engine is dead") if scenario == "busy" else (400, "prompt is too long")
            payload = json.dumps({"error": {"message": error, "type": "BadRequestError", "code": status}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if scenario == "chat":
            for chunk in (_chat_chunk(0, ""), _chat_chunk(0, "Hel"), _chat_chunk(1, "Oth"), _chat_chunk(0, "lo é"),
                          _chat_chunk(1, "er", "stop"), _chat_chunk(0, "!", "length"),
                          {"object": "chat.completion.chunk", "choices": [], "usage": USAGE}):
                self._event(json.dumps(chunk))
            self._event("[DONE]")
        elif scenario == "completion":
            self._event(json.dumps({"choices": [{"index": 0, "text": "once upon", "finish_reason": None}]}))
            self._event(json.dumps({"choices": [{"index": 0, "text": " a time", "finish_reason": "stop"}]}))
            self._event("[DONE]")
        elif scenario in ("engine_died", "bad_grammar"):
            code = 500 if scenario == "engine_died" else 400
            self._event(json.dumps(_chat_chunk(0, "partial")))
            self._event(json.dumps({"error": {"message": f"failed with {code}", "type": "x", "code": code}}))
            self._event("[DONE]")
        elif scenario == "drop":  # vLLM dies mid-reply: the connection ends before the body does
            self._event(json.dumps(_chat_chunk(0, "partial")))
            self.wfile.flush()
            self.close_connection = True
            return
        elif scenario == "hang":  # one token, then nothing until the client leaves (vLLM aborts then)
            self._event(json.dumps(_chat_chunk(0, "first")))
            self.connection.settimeout(30)
            try:
                if self.rfile.read(1) == b"":
                    self.server.client_left.set()
            except OSError:
                self.server.client_left.set()
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")

    def _event(self, data: str) -> None:
        payload = f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.wfile.flush()

    def log_message(self, *args):
        pass


@pytest.fixture
def vllm():
    server = VllmStandIn()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def chat(vllm, scenario: str, **kwargs):
    return stream_chat(vllm.url, "tiny", [{"role": "user", "content": "hi"}], max_tokens=16, temperature=0.5,
                       extra={"scenario": scenario, "n": 2}, **kwargs)


def test_a_chat_reply_streams_its_first_choice_and_collects_every_choice_and_the_usage(vllm):
    generation, replies = Generation(), []
    with vllm_client() as http:
        assert list(chat(vllm, "chat", generation=generation, session=http, on_response=replies.append)) == \
            ["Hel", "lo é", "!"]
    assert generation.texts == {0: "Hello é!", 1: "Other"}
    assert generation.finish_reasons == {0: "length", 1: "stop"}
    assert generation.usage == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    path, body = vllm.received[0]
    assert path == "/v1/chat/completions" and body["stream"] is True and body["n"] == 2
    assert body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 16 and body["temperature"] == 0.5
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    replies[0].abort()  # once the reply has ended, an abort touches nothing


def test_a_prompt_is_a_plain_completion(vllm):
    generation = Generation()
    texts = list(stream_chat(vllm.url, "tiny", None, prompt="tell", max_tokens=None, temperature=None,
                             extra={"scenario": "completion"}, generation=generation))  # a client of its own
    assert texts == ["once upon", " a time"] and generation.finish_reasons == {0: "stop"}
    path, body = vllm.received[0]
    assert path == "/v1/completions" and body["prompt"] == "tell" and "messages" not in body
    assert "max_tokens" not in body and "temperature" not in body


def test_server_errors_are_engine_failures_and_refusals_model_errors(vllm):
    with pytest.raises(EngineFailure) as busy:
        list(chat(vllm, "busy"))
    assert not busy.value.in_flight and "503" in str(busy.value) and "engine is dead" in str(busy.value)
    with pytest.raises(ModelError, match="^prompt is too long$"):
        list(chat(vllm, "refused"))
    # Mid-stream: vLLM's own failure (code 500) was in flight; a 4xx one is the request's.
    with pytest.raises(EngineFailure, match="failed with 500") as died:
        list(chat(vllm, "engine_died"))
    assert died.value.in_flight
    with pytest.raises(ModelError, match="^failed with 400$"):
        list(chat(vllm, "bad_grammar"))


def test_a_connection_dropped_mid_reply_is_a_transport_error(vllm):
    """runner/jobs.py takes httpx's TransportError for vLLM gone: waits for it, then tries again."""
    texts = []
    with pytest.raises(httpx.TransportError):
        for text in chat(vllm, "drop"):
            texts.append(text)
    assert texts == ["partial"]


def test_a_stopped_job_aborts_the_reply_at_once_and_the_server_sees_its_client_leave(vllm):
    with vllm_client() as http, JobWatch(None, deadline_seconds=1.0, interval=0.05) as watch:
        started = time.monotonic()
        got = list(abortable(lambda on_response: chat(vllm, "hang", session=http, on_response=on_response), watch))
        assert watch.stop.is_set() and got == ["first"]
        assert time.monotonic() - started < 5  # the deadline, not the read timeout
        assert vllm.client_left.wait(5), "the stand-in never saw the client leave"
