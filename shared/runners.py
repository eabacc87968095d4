"""Runners as both sides see them: their workers' names, their liveness in Redis, and how a
runner names itself to the control plane; the environment a launcher starts a runner with."""
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


def runner_environment(base: dict[str, str], *, api_url: str, token: str, redis_url: str, runner_id: str,
                       text_model: str = "", text_model_path: str = "", image_model: str = "",
                       image_model_path: str = "", **settings: str) -> dict[str, str]:
    """The environment a launcher on this machine (`make run`, the bench) starts a runner
    (`python -m runner`) with: `base` plus the variables runner.config.RunnerConfig.from_env reads.
    `settings` are further variables by name (HELIX_SAMPLING_EXTRA=..., say); an empty one is left
    out, so the runner's own default applies."""
    env = {**base, "HELIX_API_URL": api_url, "HELIX_RUNNER_TOKEN": token, "REDIS_URL": redis_url,
           "HELIX_RUNNER_ID": runner_id, "HELIX_TEXT_MODEL": text_model, "HELIX_TEXT_MODEL_PATH": text_model_path,
           "HELIX_IMAGE_MODEL": image_model, "HELIX_IMAGE_MODEL_PATH": image_model_path}
    env.update({k: str(v) for k, v in settings.items() if v not in ("", None)})
    return env
