"""What the supervisor reports about its runner every few seconds (shared/runner_state.py): models
held, adapters, memory of the host and GPUs, jobs running by kind, version.

Everything here is cheap, because it runs every report: host memory from psutil; GPU memory from
NVML (the `pynvml` module of nvidia-ml-py, which vLLM's CUDA build brings) or else `nvidia-smi`,
never torch (importing it costs seconds, and CUDA must stay out of the supervisor); the adapters
vLLM has loaded from its /v1/models; jobs from the workers' RQ records in Redis (two pipelined
round trips). What cannot be measured is left out.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil
import requests
from redis import Redis
from rq.job import Job
from rq.worker import Worker

from shared.jobs import WorkKind
from shared.runner_state import MAX_ADAPTERS, MAX_GPUS

log = logging.getLogger(__name__)
PACKAGE = "helix-platform"


def version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def host_memory() -> dict[str, int]:
    memory = psutil.virtual_memory()
    return {"total_bytes": int(memory.total), "free_bytes": int(memory.available)}


class GpuMemory:
    """Total and free memory of each GPU, by NVML or nvidia-smi; [] where there is none. Which
    source works is found once; a machine without either is not asked again."""

    def __init__(self):
        self._read: Callable[[], list[dict[str, Any]]] | None = None
        self._nvml_ready = False
        try:
            import pynvml  # nvidia-ml-py

            self._pynvml = pynvml
            self._read = self._nvml
        except ImportError:
            if shutil.which("nvidia-smi"):
                self._read = self._smi

    def read(self) -> list[dict[str, Any]]:
        if self._read is None:
            return []
        try:
            return self._read()[:MAX_GPUS]
        except Exception as err:  # no driver, no device: report none from now on
            log.info("GPU memory not readable (%s): not reported", err)
            self._read = None
            return []

    def _nvml(self) -> list[dict[str, Any]]:
        pynvml = self._pynvml
        if not self._nvml_ready:
            pynvml.nvmlInit()
            self._nvml_ready = True
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append({"index": index, "name": name.decode() if isinstance(name, bytes) else str(name),
                         "total_bytes": int(info.total), "free_bytes": int(info.free)})
        return gpus

    @staticmethod
    def _smi() -> list[dict[str, Any]]:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,memory.free",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5,
                             check=True).stdout
        gpus = []
        for line in out.strip().splitlines():
            index, name, total, free = (part.strip() for part in line.split(","))
            gpus.append({"index": int(index), "name": name[:200], "total_bytes": int(total) * 2**20,
                         "free_bytes": int(free) * 2**20})
        return gpus


def loaded_adapters(vllm_url: str, served_name: str, timeout: float = 1.0) -> list[str] | None:
    """The LoRA adapters vLLM holds now (None when it does not answer)."""
    try:
        r = requests.get(f"{vllm_url}/v1/models", timeout=timeout)
        r.raise_for_status()
        return [m["id"] for m in r.json().get("data", []) if m.get("id") != served_name][:MAX_ADAPTERS]
    except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError):
        return None


def cached_adapters(folder: Path) -> list[str]:
    """Adapter folders kept on disk (what a job can load without downloading)."""
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))[:MAX_ADAPTERS]
    except OSError:
        return []


def kind_of_queue(queue: str) -> str:
    """helix:<kind>:<model> -> kind ("" for another queue)."""
    parts = queue.split(":", 2)
    return parts[1] if len(parts) == 3 and parts[1] in {k.value for k in WorkKind} else ""


def running_jobs(redis: Redis, worker_names: Iterable[str]) -> dict[str, int]:
    """Jobs running now on these RQ workers, by kind of work (from each job's queue)."""
    names = list(worker_names)
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(Worker.redis_worker_namespace_prefix + name, "current_job")
        current = [job.decode() for job in pipe.execute() if job]
    counts = {k.value: 0 for k in WorkKind}
    if not current:
        return counts
    with redis.pipeline(transaction=False) as pipe:
        for job_id in current:
            pipe.hget(Job.key_for(job_id), "origin")
        for origin in pipe.execute():
            kind = kind_of_queue(origin.decode()) if origin else ""
            if kind:
                counts[kind] += 1
    return counts
