"""P1: how much of a bare Flask route's request rate the platform keeps for a status poll.

GET /api/v1/sessions/{id} (API key auth, the session and its interactions from PostgreSQL) on the
control plane as `make run` serves it, against GET /bare of bench/bare_app.py under the same
gunicorn command line; the same closed-loop load (C connections, keep-alive) on each, alternated
over R repetitions. Also reported: server CPU per request (gunicorn and PostgreSQL processes) and
the load generator's share of the CPU, since on 2 cores it competes with the server.
"""
from __future__ import annotations

from bench.loadgen import closed_loop_get, cpu_seconds
from bench.report import Figure, ratio_result, spread
from bench.stack import BenchStack
from controlplane.storage.rows import SessionRow
from controlplane.usage.plans import Limits

GOAL = 0.9


BUSY_PLAN = Limits(requests_per_minute=10**6, tokens_per_minute=10**9, concurrent_jobs=1000, queued_jobs=10**5,
                   images_per_day=10**5, finetunes_per_day=1000, training_minutes_per_month=10**5,
                   storage_bytes=10**12, monthly_credits=10**9, event_streams=1000)


def measure(stack: BenchStack, figure: Figure, *, concurrency: int, seconds: float, repetitions: int, **_) -> None:
    # The user and its key on a plan that limits everything a plan can (far above this load): each
    # poll's key lookup reads both plans, as every customer's does on a hosted API.
    (owner, key), = stack.users(1, "p1", limits=BUSY_PLAN)
    (session, _), = stack.text_sessions([owner], stack.text_model, reply="Lighthouses guide ships. " * 20)
    bare = stack.bare_server("bench.bare_app:app")
    try:
        _alternate(stack, bare, session, key, figure, concurrency=concurrency, seconds=seconds,
                   repetitions=repetitions)
    finally:  # the other figures run without it
        bare.stop()
        stack.servers.remove(bare)


def _alternate(stack: BenchStack, bare, session: SessionRow, key: str, figure: Figure, *, concurrency: int,
               seconds: float, repetitions: int) -> None:
    api_path = f"/api/v1/sessions/{session.id}"
    headers = {"Authorization": f"Bearer {key}"}
    figure.model = "-"
    figure.inputs = {"concurrency": concurrency, "seconds": seconds, "repetitions": repetitions,
                     "route": "GET /api/v1/sessions/{id}", "baseline_route": "GET /bare (bench/bare_app.py)",
                     "session": "2 interactions, 500-character reply"}
    sides = {"platform": (stack.api, api_path, headers, [stack.api.process.proc.pid, stack.pg.proc.pid]),
             "baseline": (bare, "/bare", {}, [bare.process.proc.pid])}
    rates = {"platform": [], "baseline": []}
    server_ms = {"platform": [], "baseline": []}
    client_share = []
    for name, (server, path, h, _) in sides.items():  # warm both: connections, caches, imports
        closed_loop_get(server.url, path, h, concurrency, 0.5, warmup=0.2)
    for _ in range(repetitions):
        for name, (server, path, h, pids) in sides.items():
            before = cpu_seconds(pids)
            result = closed_loop_get(server.url, path, h, concurrency, seconds)
            used = cpu_seconds(pids) - before
            if result.errors:
                figure.notes.append(f"{name}: {result.errors} failed requests, first: {result.first_error}")
            if not result.ok:
                raise RuntimeError(f"{name} answered no request with 200: {result.first_error}")
            rates[name].append(result.rps)
            server_ms[name].append(1000 * used / result.ok)
            client_share.append(result.client_cpu_seconds / seconds)
    figure.platform = spread(rates["platform"], "req/s", 1)
    figure.baseline = spread(rates["baseline"], "req/s", 1)
    figure.result = ratio_result(rates["platform"], rates["baseline"])
    figure.result["server_cpu_ms_per_request"] = {k: spread(v, "ms", 3)["median"] for k, v in server_ms.items()}
    figure.result["load_generator_cpu_cores"] = spread(client_share, "cores", 2)["median"]
    figure.judge(figure.result["ratio"] >= GOAL)
