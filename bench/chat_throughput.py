"""P3, P3x, P3b: tokens/s of many chat sessions at once through the platform.

Platform side: N clients (one user each, so no per-user limit is what is measured), each POSTs a
chat session and reads its events stream (GET /api/v1/sessions/{id}/events) until its reply is
final; tokens/s = the replies' tokens (counted by the runner's vLLM tokenizer) / the time from the
first POST to the last final event. Baseline (P3, P3x): the same N prompts sent at once straight to
the runner's vLLM server, streamed, as the runner sends them. Baseline (P3b): the same prompts one
after another with Hugging Face `generate` (bench/hf_baselines.py), what a user would do instead.

Every reply is forced to `tokens` tokens (max_tokens, and the runner started with ignore_eos), so
both sides generate the same amount. A client whose stream is refused or that times out counts
as a failure: its session is deleted (its job would otherwise keep the runner busy), the figure
has no ratio and says why; the runner's queue is drained before the next measurement.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from redis import Redis
from rq import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from bench.loadgen import http_session, read_sse
from bench.report import Figure, count_reasons, ratio_result, spread
from bench.stack import REPO, SAMPLING_EXTRA, BenchStack
from shared.jobs import WorkKind, queue_name
from shared.processes import die_with_parent

GOAL_DIRECT, GOAL_GENERATE = 0.9, 4.0
SUBJECTS = ["a lighthouse keeper", "a lost robot", "the first snow", "a river town", "an old map",
            "a night train", "a clockmaker", "a desert garden", "a forgotten song", "a paper boat",
            "a mountain pass", "a quiet library", "a city of bridges", "a fox and a crow", "a broken compass",
            "a winter market"]


def prompts(n: int) -> list[str]:
    return [f"Write a short story about {SUBJECTS[i % len(SUBJECTS)]} (story {i + 1})." for i in range(n)]


def count_tokens(vllm_url: str, model: str, texts: list[str]) -> list[int]:
    http = requests.Session()
    return [http.post(f"{vllm_url}/tokenize", timeout=60,
                      json={"model": model, "prompt": t, "add_special_tokens": False}).json()["count"] for t in texts]


async def _direct_one(http, vllm_url: str, model: str, prompt: str, tokens: int) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "stream": True, "stream_options": {"include_usage": True}, **SAMPLING_EXTRA}
    async with http.post(f"{vllm_url}/v1/chat/completions", json=body) as r:
        if r.status != 200:
            return {"error": f"vLLM {r.status}: {(await r.text())[:200]}"}
        used = 0
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                usage = json.loads(line[5:]).get("usage")
                if usage:
                    used = usage["completion_tokens"]
    return {"tokens": used, "done": time.monotonic()}


async def _platform_one(http, api_url: str, key: str, prompt: str, tokens: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    form = {"input": prompt, "mode": "inference", "type": "text", "max_tokens": str(tokens)}
    async with http.post(f"{api_url}/api/v1/sessions", data=form, headers=headers) as r:
        if r.status != 201:
            return {"error": f"POST {r.status}: {(await r.text())[:200]}"}
        session = await r.json()
    sid, reply_id = session["id"], session["interactions"][-1]["id"]
    out: dict[str, Any] = {"session": sid}
    async with http.get(f"{api_url}/api/v1/sessions/{sid}/events", headers=headers) as r:
        if r.status != 200:
            out["error"] = f"stream refused {r.status}: {(await r.text())[:200]}"
        else:
            async for name, data in read_sse(r):
                view = data["interactions"][-1] if name == "session" and data.get("interactions") else data
                if name in ("session", "interaction") and view.get("id") == reply_id and view.get("finished"):
                    out.update(done=time.monotonic(), state=view.get("state"), message=view.get("message") or "",
                               error=view.get("error") or "")
                    break
                if name == "end":
                    break
    if "error" in out and "done" not in out:
        # A client that cannot watch its reply leaves, and deletes its session: its job should
        # not hold the runner while the others are measured.
        async with http.delete(f"{api_url}/api/v1/sessions/{sid}", headers=headers):
            pass
        return out
    if "done" not in out:
        out["error"] = "the stream ended without the final reply"
    elif out["state"] != "complete":
        out["error"] = f"reply ended in state {out['state']}: {out['error']}"
    else:
        out.pop("error")
    return out


async def _batch(make, n: int, timeout: float) -> tuple[float, list[dict[str, Any]]]:
    """Runs n clients at once; returns (seconds from start to the last success, their results)."""
    async with http_session() as http:
        started = time.monotonic()

        async def guarded(i: int) -> dict[str, Any]:
            try:
                return await asyncio.wait_for(make(http, i), timeout)
            except asyncio.TimeoutError:
                return {"error": f"no final reply within {timeout:.0f}s"}
            except Exception as err:  # noqa: BLE001 - one client's failure is a result
                return {"error": f"{type(err).__name__}: {err}"}

        results = await asyncio.gather(*(guarded(i) for i in range(n)))
    done = [r["done"] for r in results if "done" in r and "error" not in r]
    return (max(done) - started if done else float("nan")), results


def _drain(stack: BenchStack, model: str, key_of: dict[str, str], results: list[dict[str, Any]],
           timeout: float = 300) -> None:
    """Deletes the sessions that did not finish, then waits until the runner holds no job."""
    for r in results:
        if "error" in r and r.get("session"):
            requests.delete(f"{stack.api.url}/api/v1/sessions/{r['session']}", timeout=30,
                            headers={"Authorization": f"Bearer {key_of[r['session']]}"})
    redis = Redis.from_url(stack.vk.url)
    queue = Queue(queue_name(WorkKind.TEXT_INFERENCE, model), connection=redis, serializer=JSONSerializer)
    deadline = time.monotonic() + timeout
    while queue.count or StartedJobRegistry(queue=queue).count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the runner still holds jobs {timeout}s after the run")
        time.sleep(0.5)


def direct_run(stack: BenchStack, model: str, texts: list[str], tokens: int, timeout: float) -> tuple[float, int]:
    vllm = stack.runner()
    wall, results = asyncio.run(_batch(lambda http, i: _direct_one(http, vllm, model, texts[i], tokens),
                                       len(texts), timeout))
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(texts)} direct requests failed: {failed[0]}")
    return wall, sum(r["tokens"] for r in results)


def platform_run(stack: BenchStack, model: str, texts: list[str], tokens: int, timeout: float) -> dict[str, Any]:
    """One batch through the platform: tokens/s when every session finished, else what failed."""
    vllm = stack.runner()
    users = stack.users(len(texts), "chat")
    wall, results = asyncio.run(_batch(
        lambda http, i: _platform_one(http, stack.api.url, users[i][1], texts[i], tokens), len(texts), timeout))
    key_of = {r["session"]: users[i][1] for i, r in enumerate(results) if r.get("session")}
    _drain(stack, model, key_of, results)
    ok = [r for r in results if "error" not in r]
    counted = count_tokens(vllm, model, [r["message"] for r in ok])
    run = {"sessions": len(texts), "finished": len(ok), "seconds": wall, "tokens": sum(counted),
           "tokens_per_s": sum(counted) / wall if ok else 0.0}
    failures = count_reasons([r["error"] for r in results if "error" in r])
    if failures:
        run["failures"] = failures
    return run


def _failure_text(run: dict[str, Any]) -> str:
    reasons = "; ".join(f"{n} x {why}" for why, n in sorted(run["failures"].items(), key=lambda x: -x[1]))
    return f"{run['sessions'] - run['finished']} of {run['sessions']} sessions did not finish: {reasons}"


def measure_concurrent(stack: BenchStack, figure: Figure, *, sessions: int, tokens: int, repetitions: int,
                       model: str, shared: dict, figure_name: str, **_) -> None:
    """P3 / P3x: the platform's tokens/s / vLLM's own, same prompts, same moment of the run."""
    texts = prompts(sessions)
    figure.model = model
    figure.inputs = {"sessions": sessions, "concurrency": sessions, "tokens": tokens, "repetitions": repetitions,
                     "prompt": "Write a short story about ... (chat template of the model)",
                     "sampling": "model defaults, ignore_eos", "watched_over": "GET /api/v1/sessions/{id}/events"}
    stack.runner()
    direct_run(stack, model, prompts(4), 8, 120)  # warm-up
    direct, platform, runs = [], [], []
    for _ in range(repetitions):
        wall, made = direct_run(stack, model, texts, tokens, timeout=600)
        direct.append(made / wall)
        # Long enough for a platform 3x slower than vLLM alone; past that the goal is missed anyway.
        run = platform_run(stack, model, texts, tokens, timeout=3 * wall + 60)
        runs.append(run)
        if "failures" not in run:
            platform.append(run["tokens_per_s"])
    figure.baseline = spread(direct, "tokens/s", 1)
    figure.platform = spread(platform, "tokens/s", 1)
    if platform:
        figure.result = ratio_result(platform, direct[:len(platform)] if len(platform) == len(direct) else direct,
                                     paired=len(platform) == len(direct))
    failed = [r for r in runs if "failures" in r]
    if failed:
        figure.error = _failure_text(failed[0]) + (f" (in {len(failed)} of {len(runs)} repetitions)" if len(runs) > 1 else "")
        best = max(failed, key=lambda r: r["finished"])
        figure.result["finished"] = f"{best['finished']}/{best['sessions']} at {best['tokens_per_s']:.1f} tokens/s"
        figure.result["incomplete_run"] = {k: (round(v, 1) if isinstance(v, float) else v)
                                           for k, v in best.items() if k != "failures"}
    figure.result["platform_runs"] = [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()
                                       if k in ("finished", "tokens", "seconds")} for r in runs]
    shared[figure_name] = {"sessions": sessions, "tokens": tokens, "platform": platform, "runs": runs}
    figure.judge(bool(platform) and not failed and figure.result["ratio"] >= GOAL_DIRECT)


def generate_run(model_path: Path, texts: list[str], tokens: int, timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(texts, f)
    out = subprocess.run([sys.executable, "-m", "bench.hf_baselines", "generate", "--model", str(model_path),
                          "--prompts", f.name, "--tokens", str(tokens)],
                         cwd=REPO, capture_output=True, text=True, preexec_fn=die_with_parent(), timeout=timeout)
    Path(f.name).unlink()
    if out.returncode:
        raise RuntimeError(f"Hugging Face generate failed: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_against_generate(stack: BenchStack, figure: Figure, *, sessions: int, tokens: int, model: str,
                             shared: dict, baseline_prompts: int | None = None, **_) -> None:
    """P3b: the P3 platform run's tokens/s / the same prompts one at a time with HF generate.
    `baseline_prompts` runs only the first prompts through generate (one at a time, each reply
    the same length, its tokens/s does not depend on how many): all of them take long on a CPU."""
    texts = prompts(sessions)
    baseline_prompts = min(baseline_prompts or sessions, sessions)
    figure.model = model
    figure.inputs = {"sessions": sessions, "concurrency": sessions, "tokens": tokens, "baseline_prompts": baseline_prompts,
                     "baseline": "transformers generate, one prompt after another, same chat template"}
    earlier = shared.get("P3")
    if earlier and earlier["sessions"] == sessions and earlier["tokens"] == tokens:
        runs = earlier["runs"]  # the P3 runs of this bench run, finished or not: not run again
        figure.notes.append("platform side: the P3 runs of this bench run")
    else:
        runs = [platform_run(stack, model, texts, tokens, timeout=1200)]
    platform = [r["tokens_per_s"] for r in runs if "failures" not in r]
    if not platform:  # the baseline is still measured and reported
        figure.error = "no platform run finished: " + _failure_text(runs[0])
    generated = generate_run(stack.text_model_path, texts[:baseline_prompts], tokens, timeout=1400)
    hf = generated["tokens"] / generated["seconds"]
    figure.inputs.update(baseline_dtype=generated["dtype"], baseline_threads=generated.get("threads"))
    figure.platform = spread(platform, "tokens/s", 1)
    figure.baseline = spread([hf], "tokens/s", 1)
    if platform:
        figure.result = ratio_result(platform, [hf], paired=False)
    else:
        partial = max(runs, key=lambda r: r["finished"])
        figure.result = {"incomplete_run_tokens_per_s": round(partial["tokens_per_s"], 1),
                         "incomplete_run_finished": partial["finished"]}
    figure.judge(bool(platform) and figure.result["ratio"] >= GOAL_GENERATE)
