"""Streams a chat reply from the runner's local vLLM OpenAI-compatible server."""
from __future__ import annotations

import json
from typing import Iterator

import requests


class ModelError(Exception):
    """The model refused the request (prompt too long, bad parameters): the user must change it."""


def fit_history(base_url: str, model: str, messages: list[dict[str, str]], reply_tokens: int,
                session: requests.Session | None = None) -> list[dict[str, str]]:
    """Drops the oldest exchanges until the prompt leaves room for the reply in the context.

    A long chat must go on rather than fail once its history outgrows the model. A leading
    system message stays; the newest user message always stays (if it alone is too long, vLLM
    says so and the user sees why). Room for the reply is `reply_tokens`, at most half the context.
    """
    http = session or requests
    keep = 1 if messages and messages[0]["role"] == "system" else 0
    while len(messages) - keep > 1:
        r = http.post(f"{base_url}/tokenize", json={"model": model, "messages": messages}, timeout=(5, 60))
        if not r.ok:
            return messages  # the chat request itself will report what is wrong
        info = r.json()
        if info["count"] + min(reply_tokens, info["max_model_len"] // 2) <= info["max_model_len"]:
            break
        messages = messages[:keep] + messages[keep + 2:]  # one user turn and its reply
    return messages


def stream_chat(base_url: str, model: str, messages: list[dict[str, str]], *,
                max_tokens: int | None, temperature: float | None, extra: dict | None = None,
                session: requests.Session | None = None) -> Iterator[str]:
    body: dict = {**(extra or {}), "model": model, "messages": messages, "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    http = session or requests
    with http.post(f"{base_url}/v1/chat/completions", json=body, stream=True, timeout=(5, 600)) as r:
        if 400 <= r.status_code < 500:
            try:
                detail = r.json().get("error", {})
                detail = detail.get("message", detail) if isinstance(detail, dict) else detail
            except ValueError:
                detail = r.text[:500]
            raise ModelError(str(detail) or f"model refused the request ({r.status_code})")
        r.raise_for_status()
        for line in r.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if chunk.get("error"):
                raise ModelError(str(chunk["error"].get("message", chunk["error"])))
            for choice in chunk.get("choices", []):
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield text
