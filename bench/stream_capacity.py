"""S1: how many open event streams one control-plane process holds while status polls stay fast.

A control plane of one gunicorn worker process (the project's command line, `workers=1`) serves
GET /api/v1/sessions/{id}/events for sessions whose replies never finish (written to PostgreSQL and
queued as a POST would, for a model no runner serves). Streams are opened in steps (the levels);
a stream counts as open once its first event (the session snapshot) arrived. At each level a
poller in its own process (so the bench's own stream reading does not delay it) GETs a finished
session back to back for a few seconds; the figure is the largest level at which every stream
opened and the poller's p99 stayed under 250 ms. The baseline is the poller's latency with no
stream open. Two streams per user, so per-user limits do not decide the figure. The server
worker's resident memory is read at each level: what a stream costs.

    python -m bench.stream_capacity poll URL KEY SESSION_ID SECONDS   (the poller; prints JSON)
"""
from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from bench.loadgen import http_session, read_sse
from bench.report import Figure, count_reasons, percentile, spread
from bench.stack import REPO, BenchStack
from controlplane.storage.rows import SessionRow
from shared.jobs import WorkKind, queue_name
from shared.processes import die_with_parent

GOAL_STREAMS, BOUND_MS = 10_000, 250.0
HELD_MODEL = "bench/never-served"  # no runner takes these jobs: the replies stay unfinished
STREAMS_PER_USER = 2


@dataclass
class Stream:
    opened: bool = False
    failure: str = ""
    ended: bool = False


async def _hold(http, url: str, key: str, state: Stream, ready: asyncio.Event) -> None:
    try:
        async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as r:
            if r.status != 200:
                state.failure = f"{r.status}: {(await r.text())[:160]}"
                return
            async for name, _ in read_sse(r):
                if name == "session" and not state.opened:
                    state.opened = True
                    ready.set()
                if name == "end":
                    break
            state.ended = True
    except asyncio.CancelledError:
        raise
    except Exception as err:  # noqa: BLE001 - a failed stream is a result
        state.failure = f"{type(err).__name__}: {err}"[:160]
    finally:
        ready.set()


def _poll(url: str, key: str, session_id: str, seconds: float) -> list[float]:
    out = subprocess.run([sys.executable, "-m", "bench.stream_capacity", "poll", url, key, session_id, str(seconds)],
                         cwd=REPO, capture_output=True, text=True, preexec_fn=die_with_parent(), timeout=seconds + 60)
    if out.returncode:
        raise RuntimeError(f"poller failed: {out.stderr[-800:]}")
    return json.loads(out.stdout)


async def _ramp(stack: BenchStack, server_url: str, worker: psutil.Process | None, levels: list[int],
                sessions: list[SessionRow], keys: dict[str, str],
                poll_key: str, poll_session: str, poll_seconds: float, open_timeout: float) -> list[dict]:
    steps: list[dict] = []
    streams: list[Stream] = []
    tasks: list[asyncio.Task] = []
    async with http_session() as http:
        try:
            for level in levels:
                started = time.monotonic()
                waits = []
                for s in sessions[len(streams):level]:
                    state, ready = Stream(), asyncio.Event()
                    streams.append(state)
                    waits.append(ready.wait())
                    tasks.append(asyncio.create_task(_hold(
                        http, f"{server_url}/api/v1/sessions/{s.id}/events", keys[s.owner], state, ready)))
                try:
                    await asyncio.wait_for(asyncio.gather(*waits), open_timeout)
                except asyncio.TimeoutError:
                    pass
                opened = sum(s.opened and not s.failure and not s.ended for s in streams)
                failures = count_reasons([
                    s.failure or ("ended early" if s.ended else f"not open after {open_timeout:.0f}s")
                    for s in streams if s.failure or not s.opened or s.ended])
                step = {"streams": level, "open": opened, "open_seconds": round(time.monotonic() - started, 1),
                        "server_rss_mib": _rss_mib(worker)}
                # Polled also when some streams were refused: the latency with those that did open.
                latencies = await asyncio.to_thread(_poll, server_url, poll_key, poll_session, poll_seconds)
                step.update(polls=len(latencies), p50_ms=round(percentile(latencies, 50), 1),
                            p99_ms=round(percentile(latencies, 99), 1))
                closed = opened - sum(s.opened and not s.failure and not s.ended for s in streams)
                if closed:
                    failures["closed while polling"] = closed
                if failures:
                    step["failures"] = failures
                steps.append(step)
                if step["p99_ms"] >= BOUND_MS or "failures" in step:
                    break
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return steps


def measure(stack: BenchStack, figure: Figure, *, levels: list[int], poll_seconds: float, **_) -> None:
    from controlplane.config import Config
    from controlplane.fleet.dispatch import Dispatcher

    server = stack.control_plane("s1-control-plane", workers=1)
    redis = Redis.from_url(stack.vk.url)
    held_queue = Queue(queue_name(WorkKind.TEXT_INFERENCE, HELD_MODEL), connection=redis, serializer=JSONSerializer)
    try:
        workers = psutil.Process(server.process.proc.pid).children()
        worker = workers[0] if workers else None
        top = max(levels)
        users = stack.users(math.ceil(top / STREAMS_PER_USER) + 1, "streams")
        (poll_owner, poll_key) = users.pop()
        (poll_session, _), = stack.text_sessions([poll_owner], HELD_MODEL, reply="Lighthouses guide ships. " * 20)
        keys = dict(users)
        created = stack.text_sessions([users[i // STREAMS_PER_USER][0] for i in range(top)], HELD_MODEL, None)
        dispatcher = Dispatcher(redis, Config.from_env(stack.env))
        # Queued as the POST queues them, so no reconciler pass does it mid-measurement.
        for session, turns in created:
            dispatcher.try_enqueue(session, turns, turns[-1].id)
        sessions = [session for session, _ in created]
        figure.model = "-"
        figure.inputs = {"levels": levels, "seconds": poll_seconds, "streams_per_user": STREAMS_PER_USER,
                         "server": "gunicorn, 1 worker process (controlplane.http.serving.gunicorn_command)",
                         "poll": "GET /api/v1/sessions/{id}, back to back, one client",
                         "server_open_file_limit": list(worker.rlimit(psutil.RLIMIT_NOFILE)) if worker else None}
        baseline = _poll(server.url, poll_key, poll_session.id, poll_seconds)
        idle_rss = _rss_mib(worker)
        steps = asyncio.run(_ramp(stack, server.url, worker, levels, sessions, keys, poll_key, poll_session.id,
                                  poll_seconds, open_timeout=60 + top / 20))
    finally:
        server.stop()
        stack.servers.remove(server)
        with stack.db() as conn:
            conn.execute("DELETE FROM sessions WHERE model_name = %s", (HELD_MODEL,))
        held_queue.empty()
    held = max([s["streams"] for s in steps if "failures" not in s and s["p99_ms"] < BOUND_MS], default=0)
    figure.baseline = spread([percentile(baseline, 99)], "ms p99 (no stream)", 1)
    if steps:
        figure.platform = spread([steps[-1]["p99_ms"]], f"ms p99 at {steps[-1]['open']} open streams", 1)
    figure.result = {"streams_held": held, "most_open": max([s["open"] for s in steps], default=0),
                     "server_rss_mib_no_stream": idle_rss, "levels": steps}
    widest = max(steps, key=lambda s: s["open"], default=None)
    if widest and widest["open"] and idle_rss is not None:
        figure.result["kib_per_stream"] = round((widest["server_rss_mib"] - idle_rss) * 1024 / widest["open"], 1)
    last = steps[-1] if steps else {}
    if held < GOAL_STREAMS and "failures" in last:
        reasons = "; ".join(f"{n} x {why}" for why, n in last["failures"].items())
        figure.error = f"at {last['streams']} streams {last['open']} open: {reasons}"
    elif held < GOAL_STREAMS and last:
        figure.error = f"poller p99 {last.get('p99_ms')} ms at {last['streams']} streams (bound {BOUND_MS:.0f} ms)"
    figure.judge(held >= GOAL_STREAMS)


def _rss_mib(worker: psutil.Process | None) -> float | None:
    return round(worker.memory_info().rss / 2**20, 1) if worker else None


def poll_main(url: str, key: str, session_id: str, seconds: float) -> None:
    import requests

    http = requests.Session()
    headers = {"Authorization": f"Bearer {key}"}
    http.get(f"{url}/api/v1/sessions/{session_id}", headers=headers, timeout=30)  # connect, auth cache
    latencies, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        t = time.monotonic()
        r = http.get(f"{url}/api/v1/sessions/{session_id}", headers=headers, timeout=30)
        latencies.append((time.monotonic() - t) * 1000)
        r.raise_for_status()
    print(json.dumps(latencies))


if __name__ == "__main__" and sys.argv[1:2] == ["poll"]:
    poll_main(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
