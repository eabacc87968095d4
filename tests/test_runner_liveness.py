"""A runner keeps telling the control plane it is alive, and operators can list the runners."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from runner.config import RunnerConfig
from runner.supervisor import Supervisor
from tests.conftest import REPO


def test_a_runner_reports_itself_alive_and_the_cli_lists_it(live_server, services, runner_token, live_db):
    config = RunnerConfig(api_url=live_server, token=runner_token, redis_url=services["redis_url"],
                          runner_id="idle-runner", register_interval=0.5)
    supervisor = Supervisor(config)  # no models: registration and the watch loop alone
    supervisor.start()
    watching = threading.Thread(target=supervisor.watch, daemon=True)
    watching.start()
    def seen_for() -> float:
        row = live_db.execute("SELECT first_seen, last_seen FROM runners WHERE id = 'idle-runner'").fetchone()
        return (row["last_seen"] - row["first_seen"]).total_seconds()

    try:
        deadline = time.monotonic() + 30
        while seen_for() < 1.5:  # reports every 0.5 s or so, as the watch loop wakes
            assert time.monotonic() < deadline, "the runner stopped reporting itself"
            time.sleep(0.2)
    finally:
        supervisor.stopping.set()
        watching.join(5)

    out = subprocess.run([sys.executable, "-m", "controlplane.cli", "runners", "list"], cwd=REPO, check=True,
                         env={**os.environ, "DATABASE_URL": services["database_url"]},
                         capture_output=True, text=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("idle-runner"))
    assert "last seen" in line and "token 'test runner'" in line
