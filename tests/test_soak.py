"""The soak's short profile (bench/soak.py; `make soak` runs it for 30 minutes): three users' chats,
streamed chats, images, OpenAI calls, uploads, deletes and text fine-tunes on a stack of its own,
while a runner worker and a control-plane worker are SIGKILLed, Redis and PostgreSQL restarted
and the runner's vLLM stalled, and on until at least 50 sessions were accepted. Nothing accepted
is lost or done twice, no 5xx falls outside a fault's window, and the database's connections and
the processes' open files stay bounded."""
from __future__ import annotations

import json

import pytest

from bench import soak


@pytest.mark.timeout(900)
def test_the_short_soak_loses_nothing_and_leaks_nothing(tmp_path):
    report = soak.run(soak.PROFILES["short"], tmp_path / "soak.json")
    print(json.dumps({k: v for k, v in report.items() if k not in ("samples", "lost")}, indent=1))
    outcomes = report["outcomes"]
    assert [w["fault"] for w in report["faults"]] == list(soak.PROFILES["short"].faults)
    assert report["accepted"] >= 50 and outcomes["complete"] >= report["accepted"] // 2, outcomes
    assert outcomes["lost"] == 0, report["lost"]
    assert outcomes["twice"] == 0
    assert "(no error message)" not in report["errors"]  # a failure says why
    assert report["server_errors_outside_faults"] == []
    assert report["streams"]["complete"] >= 10 and report["first_token_seconds"]["p99"] is not None
    assert report["status_poll_seconds"]["count"] >= 100 and report["status_poll_seconds"]["p99"] < 2

    first, last = report["samples"][1], report["samples"][-1]  # after the first third's warm-up; drained
    # Two control-plane workers' pools (10 connections each) and their cache listeners at most.
    assert last["database_connections"] <= 24, [s["database_connections"] for s in report["samples"]]
    for role in ("control-plane workers", "control-plane master", "valkey", "runner supervisor"):
        assert last["roles"][role]["open_files"] <= 2 * first["roles"][role]["open_files"] + 10, (role, report["samples"])
