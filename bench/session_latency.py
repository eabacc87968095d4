"""How much the platform adds to a chat reply, measured against calling vLLM directly.

Starts the bench's stack (bench/stack.py: embedded PostgreSQL and Valkey, the control plane,
one runner) with the tiny chat model, then for the same prompts and token counts measures:
  baseline  - a streamed chat completion straight to the runner's own vLLM server;
  platform  - POST /api/v1/sessions, then the reply read from the session's events stream;
  pickup    - from the POST's answer to the runner's first update (queue + dequeue + HTTP);
and prints medians and the platform/baseline ratio; then the same with --concurrency requests at
once (wall time of the whole batch), which shows concurrent sessions batching on one vLLM.
One run, same machine, both paths warmed up first.

    .venv/bin/python bench/session_latency.py [--requests 20] [--max-tokens 64] [--concurrency 16] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.stack import BenchStack, models_dir  # noqa: E402

MODEL = "helix/tiny-chat"


def stream_events(url: str, headers: dict, session_id: str, posted_at: float) -> tuple[float, float]:
    """Returns (seconds to the runner's first update, seconds to the final interaction)."""
    first = None
    with requests.get(f"{url}/api/v1/sessions/{session_id}/events", headers=headers, stream=True,
                      timeout=120) as r:
        name = None
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:") and name in ("session", "interaction"):
                data = json.loads(line[5:])
                if name == "session":  # the snapshot: the reply may be done before the stream opened
                    data = data["interactions"][-1]
                if first is None and data["runner"]:
                    first = time.monotonic() - posted_at
                if data["finished"]:
                    return first or 0.0, time.monotonic() - posted_at
    raise RuntimeError("stream ended without a final interaction")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    stack = BenchStack(MODEL, models_dir() / "tiny-chat").start()
    try:
        (_, key), = stack.users(1)
        url = stack.api.url
        vllm_url = stack.runner()
        time.sleep(2)  # let the text workers connect to Redis

        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": MODEL, "max_tokens": args.max_tokens, "ignore_eos": True, "stream": True}
        baseline, platform, pickup = [], [], []
        for i in range(args.requests + 2):  # the first two warm both paths up
            prompt = f"question number {i}"
            t = time.monotonic()
            with requests.post(f"{vllm_url}/v1/chat/completions", stream=True, timeout=120,
                               json={**body, "messages": [{"role": "user", "content": prompt}]}) as r:
                for _ in r.iter_lines():
                    pass
            base = time.monotonic() - t
            t = time.monotonic()
            r = requests.post(f"{url}/api/v1/sessions", headers=headers,
                              data={"input": prompt, "mode": "inference", "type": "text",
                                    "max_tokens": str(args.max_tokens)})
            first, total = stream_events(url, headers, r.json()["id"], t)
            if i >= 2:
                baseline.append(base)
                platform.append(total)
                pickup.append(first)
        b, pl, pk = (statistics.median(x) * 1000 for x in (baseline, platform, pickup))
        print(f"requests: {args.requests} x {args.max_tokens} tokens, one at a time")
        print(f"baseline (vLLM direct, streamed)  median {b:7.1f} ms")
        print(f"platform (POST -> final event)    median {pl:7.1f} ms")
        print(f"pickup   (POST -> runner's first update) median {pk:7.1f} ms")
        print(f"overhead per session              median {pl - b:7.1f} ms")
        print(f"ratio platform/baseline           {pl / b:.2f}")

        def direct(i):
            with requests.post(f"{vllm_url}/v1/chat/completions", stream=True, timeout=120,
                               json={**body, "messages": [{"role": "user", "content": f"c{i}"}]}) as r:
                for _ in r.iter_lines():
                    pass

        def via_platform(i):
            t = time.monotonic()
            r = requests.post(f"{url}/api/v1/sessions", headers=headers,
                              data={"input": f"c{i}", "mode": "inference", "type": "text",
                                    "max_tokens": str(args.max_tokens)})
            stream_events(url, headers, r.json()["id"], t)

        def batch_seconds(fn) -> float:
            t = time.monotonic()
            list(pool.map(fn, range(n)))
            return time.monotonic() - t

        # vLLM's CPU engine on few cores is jittery: alternate the two paths over several rounds
        # and compare medians.
        n = args.concurrency
        direct_walls, platform_walls = [], []
        with ThreadPoolExecutor(n) as pool:
            for _ in range(args.rounds):
                direct_walls.append(batch_seconds(direct))
                platform_walls.append(batch_seconds(via_platform))
        dw, pw = statistics.median(direct_walls) * 1000, statistics.median(platform_walls) * 1000
        print(f"{n} at once, median of {args.rounds} rounds: vLLM direct {dw:.0f} ms, platform {pw:.0f} ms,"
              f" ratio {pw / dw:.2f}; one at a time the platform would take ~{pl * n:.0f} ms")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
