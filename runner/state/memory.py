"""The runner's memory: how much it has, how much is free now, and whether a job fits.

Work runs in GPU memory on a CUDA machine (read through NVML or `nvidia-smi`, as the state
report reads it, so no process has to initialise CUDA to ask), else in host memory (psutil). HELIX_RUNNER_MEMORY_BYTES caps what the
runner counts as its own (a machine shared with other work). Jobs admitted on this runner and
still running hold their declared need until they end (a training process takes its memory over
seconds, and two admitted at once must not both count the same free bytes): the reservations are
kept in Redis, so every worker process of the runner sees them.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import psutil
from redis import Redis

from runner.state.report import GpuMemory
from shared.memory import admission_need, human

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Memory:
    kind: str    # "gpu" or "host": where this runner's work runs
    total: int   # bytes this runner counts as its own
    free: int    # bytes free now (before reservations)


_gpus = GpuMemory()  # NVML or nvidia-smi, as the state report reads them


def _gpu() -> tuple[int, int] | None:
    """(total, free) bytes of the first GPU this process may use, or None without one."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return None
    gpus = _gpus.read()
    first = (visible or "").split(",")[0].strip()
    chosen = next((g for g in gpus if first.isdigit() and g["index"] == int(first)), gpus[0] if gpus else None)
    return (chosen["total_bytes"], chosen["free_bytes"]) if chosen else None


def measure(limit: int = 0) -> Memory:
    """This runner's memory now; `limit` (bytes, 0 for none) caps the total it counts."""
    gpu = _gpu()
    if gpu is not None:
        kind, (total, free) = "gpu", gpu
    else:
        vm = psutil.virtual_memory()
        kind, total, free = "host", vm.total, vm.available
    if limit:
        total = min(total, limit)
    return Memory(kind, total, min(free, total))


def announced(limit: int = 0) -> dict[str, int]:
    """The static totals a runner announces: the control plane fails at once work that no runner
    could ever hold."""
    host = psutil.virtual_memory().total
    gpu = _gpu()
    info = {"host_memory_bytes": min(host, limit) if limit and gpu is None else host}
    if gpu is not None:
        info["gpu_memory_bytes"] = min(gpu[0], limit) if limit else gpu[0]
    return info


def reservations_key(runner_id: str) -> str:
    return f"helix:memory-reserved:{runner_id}"


class Admission:
    """Decides whether this runner starts a job now, and holds its memory while it runs."""

    def __init__(self, redis: Redis, runner_id: str, limit: int = 0):
        self.redis, self.key, self.limit = redis, reservations_key(runner_id), limit
        self.total = measure(limit)  # the totals do not change: measured once, not per chat

    def refusal(self, kind: str, declared: int) -> str:
        """Why this runner cannot start the job now ("" when it can)."""
        if declared <= 0:
            return ""
        if declared > self.total.total:
            return (f"needs {human(declared)} of {self.total.kind} memory, this runner has"
                    f" {human(self.total.total)} in all")
        need = admission_need(kind, declared)
        if need <= 0:
            return ""
        memory = measure(self.limit)
        reserved = sum(int(v) for v in self.redis.hvals(self.key))
        free = min(memory.free, memory.total - reserved)
        if need > free:
            return f"needs {human(need)} of {memory.kind} memory free, this runner has {human(max(free, 0))} free"
        return ""

    def admit(self, worker: str, job_id: str, kind: str, declared: int) -> str:
        """Holds the job's memory and returns "" when it fits now; else says why not. Under a lock,
        so two worker processes of this runner never both count the same free bytes."""
        if admission_need(kind, declared) <= 0:
            return self.refusal(kind, declared)  # work on the warm model: no memory to reserve
        with self.redis.lock(self.key + ":lock", timeout=30, blocking_timeout=30):
            refusal = self.refusal(kind, declared)
            need = admission_need(kind, declared)
            if not refusal and need > 0:
                self.redis.hset(self.key, self.field(worker, job_id), need)
            return refusal

    @staticmethod
    def field(worker: str, job_id: str) -> str:
        return f"{worker}|{job_id}"

    def release(self, worker: str, job_id: str) -> None:
        try:
            self.redis.hdel(self.key, self.field(worker, job_id))
        except Exception as err:  # Redis away: the runner's restart clears the reservations
            log.warning("could not release the memory of %s: %s", job_id, err)

    def forget_worker(self, worker: str) -> None:
        """A worker process died: the jobs it held hold no memory any more."""
        fields = [f for f in self.redis.hkeys(self.key) if f.decode().split("|", 1)[0] == worker]
        if fields:
            self.redis.hdel(self.key, *fields)

    def clear(self) -> None:
        """At the runner's start: no job of its runs any more."""
        self.redis.delete(self.key)
