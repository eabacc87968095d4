"""Prometheus metrics of a runner, served by its supervisor on HELIX_RUNNER_METRICS_PORT (0: off).

The work happens in the worker processes and the supervisor serves the scrape, so the counters use
prometheus_client's multiprocess mode: the supervisor names a fresh folder in
PROMETHEUS_MULTIPROC_DIR (shared/metrics_files.py) before it imports this module or starts its
workers (they inherit it; vLLM does not, it keeps its own metrics), and its HTTP server sums the
processes' files. Memory, the models held and the jobs running come from the supervisor's latest
state report, by a collector of its own. With metrics off nothing is served
and the workers' counters stay in their own memory (a few bytes).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from shared.metrics_files import MULTIPROC_ENV

log = logging.getLogger(__name__)

JOBS = Counter("helix_runner_jobs_total", "Jobs this runner ran, by kind of work and outcome"
               " (complete, error: refused or failed for the user; skipped: interaction gone; failed: raised,"
               " RQ retries it)", ["kind", "outcome"])
JOB_SECONDS = Histogram("helix_runner_job_seconds", "Time a job ran, by kind of work", ["kind"],
                        buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600))
TOKENS = Counter("helix_runner_generated_tokens_total", "Tokens generated for chats (rate() = tokens per second)",
                 ["model"])
TOKENS_PER_SECOND = Histogram("helix_runner_tokens_per_second", "Generation speed of one chat reply", ["model"],
                              buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500))
REPLY_PAUSES = Counter("helix_runner_reply_pauses_total", "Chat replies paused to share the batch with another"
                       " user's chat (runner/text/fair_batch.py)")
MODEL_LOADS = Counter("helix_runner_model_loads_total", "Model loads: the vLLM server started, the image pipeline"
                      " loaded", ["kind"])
ADAPTER_LOADS = Counter("helix_runner_adapter_loads_total", "LoRA adapter loads (text: into vLLM; image: into the"
                        " pipeline)", ["kind"])


def worker_died(pid: int) -> None:
    """A worker process ended: its live gauges no longer count (its counters still do)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class StateCollector:
    """Gauges from the supervisor's latest state report."""

    def __init__(self, latest: Callable[[], dict[str, Any]]):
        self.latest = latest

    def collect(self):
        state = self.latest() or {}
        memory = GaugeMetricFamily("helix_runner_memory_bytes", "Memory of the runner's host and GPUs",
                                   labels=["device", "kind"])
        host = state.get("memory", {}).get("host", {})
        for kind in ("total", "free"):
            if f"{kind}_bytes" in host:
                memory.add_metric(["host", kind], host[f"{kind}_bytes"])
        for gpu in state.get("memory", {}).get("gpu", []):
            for kind in ("total", "free"):
                memory.add_metric([f"gpu{gpu.get('index', 0)}", kind], gpu.get(f"{kind}_bytes", 0))
        yield memory
        models = GaugeMetricFamily("helix_runner_model_loaded", "1 for each model the runner holds loaded",
                                   labels=["type", "model", "state"])
        for m in state.get("models", []):
            models.add_metric([m["type"], m["name"], m.get("state", "loaded")], 1)
        yield models
        running = GaugeMetricFamily("helix_runner_jobs_running", "Jobs running now, by kind of work", labels=["kind"])
        for kind, n in state.get("jobs", {}).items():
            running.add_metric([kind], n)
        yield running


def serve(port: int, latest: Callable[[], dict[str, Any]], addr: str = "0.0.0.0") -> Any:
    """Starts the scrape endpoint in a daemon thread; returns the HTTP server."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    registry.register(StateCollector(latest))
    server, thread = start_http_server(port, addr=addr, registry=registry)
    log.info("runner metrics at http://%s:%d/metrics", addr, server.server_port)
    return server

