"""Which dtype serves the default text model fastest on this machine, measured in one run.

Starts the runner's vLLM server (LoRA enabled, as the runner runs it) once per dtype on the same
model directory and measures, for each: one stream of N tokens (tokens/s), and C requests at once
(total tokens/s). Prints each figure and the ratio against the first dtype.

    .venv/bin/python bench/text_model_dtype.py [--model .helix/models/smollm2-135m-instruct]
        [--dtypes bfloat16,float32] [--tokens 128] [--concurrency 16]
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner.text.vllm_server import VllmServer  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def complete(url: str, tokens: int) -> int:
    r = requests.post(f"{url}/v1/chat/completions", timeout=600, json={
        "model": "bench", "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens, "temperature": 0.8, "ignore_eos": True})
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


def measure(model: str, dtype: str, tokens: int, concurrency: int, log_dir: Path) -> dict[str, float]:
    server = VllmServer(model, "bench", extra_args=f"--dtype {dtype}", log_dir=log_dir).start()
    try:
        server.wait_ready(600)
        complete(server.base_url, 16)  # warm-up
        started = time.monotonic()
        one = complete(server.base_url, tokens) / (time.monotonic() - started)
        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            total = sum(pool.map(lambda _: complete(server.base_url, tokens), range(concurrency)))
        many = total / (time.monotonic() - started)
        return {"one stream": one, f"{concurrency} at once": many}
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / ".helix/models/smollm2-135m-instruct"))
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()
    log_dir = REPO / ".helix" / "logs" / "bench"
    results = {d: measure(args.model, d, args.tokens, args.concurrency, log_dir) for d in args.dtypes.split(",")}
    first = next(iter(results.values()))
    for dtype, figures in results.items():
        line = ", ".join(f"{k}: {v:.1f} tokens/s ({v / first[k]:.2f}x)" for k, v in figures.items())
        print(f"{dtype}: {line}", flush=True)


if __name__ == "__main__":
    main()
