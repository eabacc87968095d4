"""Runner liveness, as both sides read it in Redis."""

# A runner's worker refreshes this key while it lives; the control plane's reconciler treats a
# started job whose worker key has expired as dropped and queues it again.
HEARTBEAT_INTERVAL_SECONDS = 2
HEARTBEAT_TTL_SECONDS = 8


def worker_alive_key(worker_name: str) -> str:
    return f"helix:worker-alive:{worker_name}"
