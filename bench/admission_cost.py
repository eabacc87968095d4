"""A1: the server CPU the admission check costs a request (usage/admission.py: its user's and
key's plans, requests and tokens per minute in Redis), in milliseconds, measured in-process as
process CPU time over many checks of a user whose plan and key's plan limit everything, against
the same checks of a user on the unlimited default plan (which cost next to nothing)."""
from __future__ import annotations

import statistics
import time
from dataclasses import replace

from flask import g

from bench.api_throughput import BUSY_PLAN
from bench.report import Figure, spread
from bench.stack import BenchStack
from controlplane.accounts import store as accounts
from controlplane.app import create_app
from controlplane.config import Config
from controlplane.storage import db
from controlplane.usage import admission


def _cpu_ms_per_check(app, key: str, checks: int) -> float:
    with app.test_request_context("/api/v1/sessions", method="POST", data={"input": "hello", "max_tokens": "64"}):
        with db.transaction() as conn:
            user = accounts.user_for_api_key(conn, key)
        fields = {"input": "hello", "max_tokens": "64"}
        started = time.process_time()
        for _ in range(checks):
            g.user = user
            g.pop("admission", None)
            admission.admit(admission.Work.TEXT, fields)
        return (time.process_time() - started) * 1000 / checks


def measure(stack: BenchStack, figure: Figure, *, checks: int, repetitions: int, **_) -> None:
    config = replace(Config.from_env(stack.env), filestore=str(stack.work / "a1-files"))
    app = create_app(config, start_reconciler=False)
    (_, limited), = stack.users(1, "a1", limits=BUSY_PLAN)
    (_, unlimited), = stack.users(1, "a1-free")
    figure.inputs = {"checks": checks, "repetitions": repetitions, "plan": "user and key each on a plan limiting"
                     " everything; the check charges requests and tokens per minute of both"}
    limited_ms, free_ms = [], []
    for _ in range(repetitions):
        limited_ms.append(_cpu_ms_per_check(app, limited, checks))
        free_ms.append(_cpu_ms_per_check(app, unlimited, checks))
    figure.platform = spread(limited_ms, "ms CPU per check", 4)
    figure.baseline = spread(free_ms, "ms CPU per check, default plan", 4)
    figure.result = {"ms_per_request": round(statistics.median(limited_ms), 4)}
    figure.judge(figure.result["ms_per_request"] <= 0.2)
