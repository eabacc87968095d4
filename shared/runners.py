"""Runners as both sides see them: their workers' names, their liveness in Redis, and how a
runner names itself to the control plane."""
from __future__ import annotations

import secrets

# A runner's worker refreshes this key while it lives; the control plane's reconciler treats a
# started job whose worker key has expired as dropped and queues it again.
HEARTBEAT_INTERVAL_SECONDS = 2
HEARTBEAT_TTL_SECONDS = 8

# The header in which a runner names itself (its HELIX_RUNNER_ID) on every request: a runner
# token acts only for the runner ids registered with it.
RUNNER_HEADER = "X-Helix-Runner"


def worker_alive_key(worker_name: str) -> str:
    return f"helix:worker-alive:{worker_name}"


def worker_name(runner_id: str, kind: str, index: int) -> str:
    """A name new for every worker process: RQ refuses a name whose last owner died without
    saying so, and the reconciler must tell a dead worker's job from a live successor's.
    It starts with the runner's id, so the control plane knows which runner holds a job."""
    return f"{runner_id}.{kind}.{index}.{secrets.token_hex(3)}"


def thread_worker_name(process_worker: str, thread: int) -> str:
    """The name of one of a worker process's thread workers: its process's name with the
    thread's number added to the index part, so it names the same runner."""
    head, index, suffix = process_worker.rsplit(".", 2)
    return f"{head}.{index}-{thread}.{suffix}"


def runner_of_worker(name: str) -> str:
    """The runner id in a worker's name (runner ids may hold dots; the other three parts do not)."""
    parts = name.rsplit(".", 3)
    return parts[0] if len(parts) == 4 else ""
