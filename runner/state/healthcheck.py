"""`python -m runner.state.healthcheck`: exits 0 while this runner's workers are listening, 1 otherwise.

For container health checks and Kubernetes probes: a runner serves nothing over HTTP (its vLLM
listens on loopback only), so this asks Redis what the control plane's reconciler itself goes by,
the heartbeat keys its workers refresh every few seconds. A runner with at least one live worker
key is healthy. It reads REDIS_URL and HELIX_RUNNER_ID, which a container must then set (the
default id holds the supervisor's pid, which a probe cannot know).
"""
from __future__ import annotations

import os
import re
import sys

from redis import Redis
from redis.exceptions import RedisError

from shared.runners import worker_alive_key


def live_worker_keys(redis: Redis, runner_id: str) -> list[str]:
    """The heartbeat keys of this runner's workers (their names start with the runner id and a dot)."""
    pattern = worker_alive_key(re.sub(r"([*?\[\]\\])", r"\\\1", runner_id) + ".*")
    return [key.decode() for key in redis.scan_iter(match=pattern, count=1000)]


def main() -> int:
    runner_id, redis_url = os.environ.get("HELIX_RUNNER_ID", ""), os.environ.get("REDIS_URL", "")
    if not runner_id or not redis_url:
        print("runner.state.healthcheck needs HELIX_RUNNER_ID and REDIS_URL in its environment", file=sys.stderr)
        return 1
    try:
        keys = live_worker_keys(Redis.from_url(redis_url, socket_timeout=3, socket_connect_timeout=3), runner_id)
    except RedisError as err:
        print(f"runner {runner_id}: Redis unreachable: {err}", file=sys.stderr)
        return 1
    if not keys:
        print(f"runner {runner_id}: no worker is listening", file=sys.stderr)
        return 1
    print(f"runner {runner_id}: {len(keys)} workers listening")
    return 0


if __name__ == "__main__":
    sys.exit(main())
