"""F1: another user's chat behind one user's backlog of queued chats, divided by the same chat on
an idle runner: what fair share buys (first come, first served made it about 120 times as long).

One user posts `backlog` chats; then another user posts one and it is timed from its POST to its
reply being final (polled). Alone: the same chat with nothing else queued. The two alternate,
`repetitions` times; between them the backlog is cancelled and the runner left idle. Everything
is the code's own default (text workers, fair share, no plans)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import requests

from bench.report import Figure, ratio_result, spread
from bench.stack import BenchStack
from controlplane.sessions.views import UNSET_TIME


def _post(http: requests.Session, url: str, key: str, text: str, tokens: int) -> str:
    r = http.post(f"{url}/api/v1/sessions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                  data={"input": text, "mode": "inference", "type": "text", "max_tokens": str(tokens)})
    r.raise_for_status()
    return r.json()["id"]


def _reply(http: requests.Session, url: str, key: str, session_id: str) -> dict:
    r = http.get(f"{url}/api/v1/sessions/{session_id}", headers={"Authorization": f"Bearer {key}"}, timeout=60)
    r.raise_for_status()
    return r.json()["interactions"][-1]


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end or UNSET_TIME in (start, end):
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 1)


def _timed_chat(http: requests.Session, url: str, key: str, tokens: int, timeout: float) -> tuple[float, dict]:
    """Seconds from POST to a final reply, and what the reply said while it waited (with the
    seconds it waited for a worker and ran on one, from its own timestamps)."""
    started = time.perf_counter()
    session_id = _post(http, url, key, "Tell me about the sea, in a few words.", tokens)
    first = _reply(http, url, key, session_id)
    while True:
        reply = _reply(http, url, key, session_id)
        if reply["finished"]:
            if reply["state"] != "complete":
                raise RuntimeError(f"the timed chat failed: {reply.get('error')}")
            first["waited_s"] = _seconds_between(reply["created"], reply["scheduled"])
            first["ran_s"] = _seconds_between(reply["scheduled"], reply["completed"])
            return time.perf_counter() - started, first
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"the timed chat was not answered in {timeout:.0f} s")
        time.sleep(0.05)


def _cancel_all(http: requests.Session, url: str, key: str, session_ids: list[str]) -> None:
    def cancel(sid: str) -> None:
        r = http.post(f"{url}/api/v1/sessions/{sid}/cancel", headers={"Authorization": f"Bearer {key}"}, timeout=60)
        if r.status_code not in (200, 409):
            r.raise_for_status()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(cancel, session_ids))


def measure(stack: BenchStack, figure: Figure, *, backlog: int, tokens: int, repetitions: int, model: str,
            **_) -> None:
    stack.runner()
    (_, hog), (_, other) = stack.users(2, "f1")
    url, http = stack.api.url, requests.Session()
    figure.model = model
    figure.inputs = {"backlog": backlog, "tokens": tokens, "repetitions": repetitions,
                     "fair share": "the code's default, no plans"}
    _timed_chat(http, url, other, tokens, 300)  # warm
    alone, behind, waited_as = [], [], []
    for _ in range(repetitions):
        alone.append(_timed_chat(http, url, other, tokens, 300)[0])
        backlog_ids = [_post(http, url, hog, f"Count to {n}.", tokens) for n in range(backlog)]
        seconds, first = _timed_chat(http, url, other, tokens, 1200)
        behind.append(seconds)
        waited_as.append({"said": first.get("waiting_reason") or first.get("state"),
                          "waited_s": first["waited_s"], "ran_s": first["ran_s"]})
        _cancel_all(http, url, hog, backlog_ids)
    figure.platform = spread(behind, "s behind the backlog")
    figure.baseline = spread(alone, "s alone")
    figure.result = ratio_result(behind, alone, higher_is_better=False)
    figure.notes.append(f"the timed chat, just posted behind the backlog, said: {waited_as}")
    figure.judge(figure.result["ratio"] <= 2)
