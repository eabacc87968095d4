"""`helix runner`: supervises the runner node's processes.

Starts the vLLM server for the text model, one text worker process keeping K jobs in flight
against it (one RQ worker per thread), the fine-tune workers, and one image worker holding the
diffusers pipeline. Restarts a worker that dies; stops everything on
SIGTERM/SIGINT; and every child carries a parent-death signal, so a runner killed with SIGKILL
leaves nothing behind (its jobs are re-queued by the control plane when heartbeats stop).

A reporter thread tells the control plane every HELIX_REGISTER_INTERVAL seconds that the runner is
here, with its state (runner/state/report.py), even while vLLM restarts. When the control plane
refuses the runner's token (revoked), or its release (426: the control plane was upgraded to
runner messages this runner does not speak), the runner stops at once as if killed: its workers
are ended with SIGKILL, so the jobs they held are queued again by the reconciler once their
heartbeats expire, and it exits with a message saying why. HELIX_RUNNER_METRICS_PORT serves Prometheus
metrics (runner/state/metrics.py).
"""
from __future__ import annotations

import _thread
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import requests
from redis import Redis
from redis.exceptions import RedisError

from runner.config import IMAGE_ADAPTERS, TRAINING, RunnerConfig
from runner.control_plane.client import ControlPlane
from runner.images import calibration as image_calibration
from runner.state import memory
from runner.state import report as state_report
from runner.state.forgotten import ForgottenAdapters
from runner.text.vllm_server import VllmServer
from shared import logs, metrics_files
from shared.jobs import WorkKind
from shared.processes import die_with_parent, stop
from shared.runners import thread_worker_name, worker_alive_key, worker_name

log = logging.getLogger("runner")
# vLLM deaths while starting, in a row, after which the runner gives up: a model that cannot load
# fails every time; a request that crashed it again just after it came up does so once.
MAX_VLLM_FAILED_STARTS = 3
REVOKED_MESSAGE = ("runner token revoked: this runner stopped (create a new token with `helix runners token NAME`"
                   " and set HELIX_RUNNER_TOKEN)")


class Supervisor:
    def __init__(self, config: RunnerConfig):
        self.config = config
        os.environ["HELIX_RUNNER_ID"] = config.runner_id  # its workers report under the same name
        self.client = ControlPlane(config.api_url, config.token, config.runner_id)
        self.vllm: VllmServer | None = None
        self.workers: dict[tuple[WorkKind, int], subprocess.Popen] = {}
        self.worker_names: dict[tuple[WorkKind, int], str] = {}
        self.stopping = threading.Event()
        self.refused = threading.Event()  # the control plane refuses this runner: stop as if killed
        self.refusal = REVOKED_MESSAGE  # what the runner says as it exits
        # Called from the reporter thread once the runner is refused: main() interrupts its main
        # thread with it, wherever that is (waiting for vLLM to start, say).
        self.on_refused: Callable[[], None] | None = None
        self.announced = 0.0
        self.vllm_ready = False
        self.vllm_failed_starts = 0  # in a row, while restarting it (see _restart_vllm)
        self.state: dict = {}
        self.redis = Redis.from_url(config.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.gpu = state_report.GpuMemory()
        self._announcing = threading.Lock()
        self.forgotten = ForgottenAdapters(config.work_dir)
        self.metrics_dir, self._made_metrics_dir, self.metrics_server = "", False, None
        if config.metrics_port:  # before prometheus_client is imported here or in a worker
            self.metrics_dir, self._made_metrics_dir = metrics_files.prepare(
                f"helix-runner-metrics-{config.runner_id[:40].replace('/', '_')}-", operators_own=False)

    def _count_model_load(self, kind: str) -> None:
        if self.config.metrics_port:
            from runner.state import metrics

            metrics.MODEL_LOADS.labels(kind).inc()

    def _models_held(self) -> list[dict]:
        held = []
        if self.config.text_model:
            alive = self.vllm is not None and self.vllm.alive()
            state = "loaded" if alive and self.vllm_ready else "starting" if alive or self.vllm is None else "down"
            held.append({"type": "text", "name": self.config.text_model, "state": state})
        if self.config.image_model:
            proc = self.workers.get((WorkKind.IMAGE_INFERENCE, 0))
            name = self.worker_names.get((WorkKind.IMAGE_INFERENCE, 0))
            if proc is not None and proc.poll() is not None:
                state = "down"
            elif proc is not None and name and self.redis.exists(worker_alive_key(name)):
                state = "loaded"  # its worker listens once the pipeline is loaded
            else:
                state = "starting"
            held.append({"type": "image", "name": self.config.image_model, "state": state})
        return held

    def _rq_workers(self) -> dict[WorkKind, list[str]]:
        """The RQ worker names of each live worker process, by the kind of work it was started for."""
        names: dict[WorkKind, list[str]] = {}
        for (kind, index), name in list(self.worker_names.items()):
            proc = self.workers.get((kind, index))
            if proc is None or proc.poll() is not None:
                continue
            threads = self.text_threads() if kind == WorkKind.TEXT_INFERENCE else 1
            names.setdefault(kind, []).extend(
                [name] if threads == 1 else [thread_worker_name(name, t) for t in range(threads)])
        return names

    def text_threads(self) -> int:
        """A text worker process's threads: its workers, and its reserve for another user's chat."""
        return self.config.text_workers + max(0, self.config.text_reserve_workers)

    def collect_state(self) -> dict:
        """The state this runner reports (shared/runner_state.py); also kept for the metrics."""
        state: dict = {"version": state_report.version(), "report_interval": self.config.register_interval,
                       "memory": {"host": state_report.host_memory()}}
        try:
            state["models"] = self._models_held()
            workers = self._rq_workers()
            state["jobs"] = state_report.running_jobs(self.redis, [n for names in workers.values() for n in names])
            # Fair share counts a text worker process's HELIX_TEXT_WORKERS, not its reserve.
            state["workers"] = {kind.value: len(names) if kind != WorkKind.TEXT_INFERENCE
                                else len(names) // self.text_threads() * self.config.text_workers
                                for kind, names in workers.items()}
        except RedisError as err:
            log.warning("runner state without jobs: Redis unavailable: %s", err)
        gpus = self.gpu.read()
        if gpus:
            state["memory"]["gpu"] = gpus
        adapters = {}
        if self.vllm is not None and self.vllm_ready:
            loaded = state_report.loaded_adapters(self.vllm.base_url, self.config.text_model)
            if loaded is not None:
                adapters["text"] = loaded
        if self.config.image_model:
            adapters["image"] = state_report.cached_adapters(Path(self.config.work_dir) / IMAGE_ADAPTERS)
        if adapters:
            state["adapters"] = adapters
        self.state = state
        return state

    def _announce(self) -> None:
        models = {"text": [self.config.text_model] if self.config.text_model else [],
                  "image": [self.config.image_model] if self.config.image_model else []}
        info = {"text_workers": self.config.text_workers,
                "finetune_workers": self.config.finetune_workers if self.config.text_model else 0,
                "image_finetune_workers": self.config.image_finetune_workers if self.config.image_model else 0}
        # Static totals: the control plane fails at once work no runner of the fleet could hold.
        info.update(memory.announced(self.config.memory_limit_bytes))
        if self.config.text_model:  # the control plane refuses at once what the model cannot take
            info.update(max_model_len=self.config.max_model_len, max_tokens=self.config.max_tokens)
        if self.config.image_model:  # likewise for images, once the image worker has measured its pipeline
            info.update(image_calibration.announced(self.config))
        with self._announcing:  # the reporter thread and start() share one HTTP session
            answer = self.client.register(models, info, self.collect_state(), self.forgotten.seen)
            self.forgotten.delete(answer.forget, answer.forgotten_through,
                                  self.vllm.base_url if self.vllm is not None and self.vllm_ready else "")
        self.announced = time.monotonic()

    def _admission(self) -> memory.Admission:
        return memory.Admission(Redis.from_url(self.config.redis_url), self.config.runner_id,
                                self.config.memory_limit_bytes)

    def register(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._announce()
                return
            except requests.HTTPError as err:
                status = err.response.status_code if err.response is not None else 0
                if status in (401, 403):
                    raise SystemExit(f"control plane refused the runner token: {err.response.text[:200]}")
                if 400 <= status < 500 and status != 429:  # an id taken by another token, a bad model name
                    raise SystemExit(f"control plane refused the registration: {err.response.text[:300]}")
                problem = err
            except requests.RequestException as err:
                problem = err
            if time.monotonic() > deadline:
                raise SystemExit(f"control plane at {self.config.api_url} unreachable: {problem}")
            time.sleep(1)

    def _spawn(self, kind: WorkKind, index: int) -> None:
        name = worker_name(self.config.runner_id, kind.value, index)
        self.worker_names[(kind, index)] = name
        cmd = [sys.executable, "-m", "runner.worker", "--kind", kind.value, "--name", name]
        if kind in (WorkKind.TEXT_INFERENCE, WorkKind.TEXT_FINETUNE) and self.vllm is not None:
            cmd += ["--vllm-url", self.vllm.base_url]
        if kind == WorkKind.TEXT_INFERENCE:
            cmd += ["--threads", str(self.text_threads())]
        # SIGKILL, not SIGTERM: RQ treats SIGTERM as "finish the current job first", and a
        # runner that died must not keep a job (and its heartbeat) alive in an orphan.
        self.workers[(kind, index)] = subprocess.Popen(cmd, preexec_fn=die_with_parent(signal.SIGKILL))

    def _report(self) -> None:
        """Every `register_interval`: this runner is here, and its state. Stops the runner when the
        control plane refuses its token (revoked) or its release (upgrade it)."""
        while not self.stopping.wait(self.config.register_interval):
            try:
                self._announce()
            except requests.HTTPError as err:
                status = err.response.status_code if err.response is not None else 0
                if status in (401, 403, 426):
                    said = err.response.text[:300]
                    self.refusal = REVOKED_MESSAGE if status != 426 else f"this runner stopped: {said}"
                    log.error("the control plane refused this runner's %s (%s). Stopping this runner now; its jobs"
                              " are queued again for other runners",
                              "release: upgrade it" if status == 426 else "token: it was revoked", said)
                    self.refused.set()
                    if self.on_refused is not None:
                        self.on_refused()
                    return
                log.warning("the control plane refused this runner's report: %s %s", status,
                            err.response.text[:200] if err.response is not None else "")
            except requests.RequestException as err:
                log.warning("could not tell the control plane this runner is alive: %s", err)

    def start(self) -> None:
        image_calibration.forget(self.config)
        # What trainers killed with an earlier run of this runner left: copies of their users' pairs
        # and checkpoints. The filestore has the checkpoints, and a retry resumes from those.
        shutil.rmtree(Path(self.config.work_dir) / TRAINING, ignore_errors=True)
        self._admission().clear()  # none of this runner's jobs runs any more
        self.register()
        if self.config.metrics_port:
            from runner.state import metrics

            try:
                self.metrics_server = metrics.serve(self.config.metrics_port, lambda: self.state,
                                                    addr=self.config.metrics_addr)
            except OSError as err:
                raise SystemExit(f"cannot serve metrics on {self.config.metrics_addr}:{self.config.metrics_port}"
                                 f" (HELIX_RUNNER_METRICS_PORT): {err}") from None
        threading.Thread(target=self._report, name="runner-report", daemon=True).start()
        if self.config.text_model:
            self.vllm = VllmServer(
                self.config.text_model_path or self.config.text_model, self.config.text_model,
                port=self.config.vllm_port, max_model_len=self.config.max_model_len,
                kv_cache_gib=self.config.kv_cache_gib, extra_args=self.config.vllm_args,
                log_dir=Path(self.config.log_dir) if self.config.log_dir else None,
            ).start()
        if self.vllm is not None:
            log.info("vLLM healthy after %.1fs", self.vllm.wait_ready())
            self.vllm_ready = True
            self._count_model_load("text")
            if self.config.text_workers > 0:
                self._spawn(WorkKind.TEXT_INFERENCE, 0)
            for i in range(self.config.finetune_workers):
                self._spawn(WorkKind.TEXT_FINETUNE, i)
        if self.config.image_model:  # after vLLM's start-up, which would skew the pipeline's measurement
            self._spawn(WorkKind.IMAGE_INFERENCE, 0)
            for i in range(self.config.image_finetune_workers):  # each run trains in its own child
                self._spawn(WorkKind.IMAGE_FINETUNE, i)
        self._wait_for_workers()
        # Once listening: the control plane learns the workers (fair share divides them between
        # users) and the image budget the image worker measured before it listened.
        self.register()
        log.info("runner %s ready: text=%r image=%r", self.config.runner_id,
                 self.config.text_model, self.config.image_model)

    def _wait_for_workers(self, timeout: float = 300) -> None:
        """Ready means listening: each worker's heartbeat key appears just before it dequeues."""
        redis = Redis.from_url(self.config.redis_url)
        keys = [worker_alive_key(name) for name in self.worker_names.values()]
        deadline = time.monotonic() + timeout
        while keys and redis.exists(*keys) < len(keys):
            dead = [k for k, p in self.workers.items() if p.poll() is not None]
            if dead:
                raise SystemExit(f"worker {dead[0][0].value}.{dead[0][1]} exited while starting")
            if time.monotonic() > deadline:
                raise SystemExit(f"runner workers not listening after {timeout}s")
            time.sleep(0.2)

    def _restart_vllm(self) -> None:
        """Starts vLLM again. It may die again before this sees it healthy (a request held for a
        crash, sent the moment it answers, crashes it again): that is one more restart on the next
        turn of watch(), not the end of the runner; only a vLLM that never comes up ends it."""
        log.error("vLLM exited (%s); restarting it", self.vllm.proc.returncode)
        self.vllm_ready = False
        self.vllm.stop()  # what is left of its process group
        self.vllm.start()
        try:
            log.info("vLLM healthy again after %.1fs", self.vllm.wait_ready())
        except RuntimeError as err:
            self.vllm_failed_starts += 1
            if self.vllm_failed_starts >= MAX_VLLM_FAILED_STARTS:
                raise SystemExit(f"vLLM failed to start {self.vllm_failed_starts} times in a row: {err}") from None
            log.error("vLLM died while starting (%s); restarting it again", err)
            return
        self.vllm_failed_starts = 0
        self.vllm_ready = True
        self._count_model_load("text")

    def watch(self) -> None:
        """Restart what dies until asked to stop (the reporter thread tells the control plane that
        this runner is still here); stop at once when the control plane refuses the runner."""
        while not self.stopping.wait(0.5):
            if self.refused.is_set():
                raise SystemExit(self.refusal)
            if self.vllm is not None and not self.vllm.alive():
                self._restart_vllm()
            for (kind, index), proc in list(self.workers.items()):
                if proc.poll() is not None and not self.stopping.is_set():
                    log.error("worker %s.%d exited with %s; restarting", kind.value, index, proc.returncode)
                    try:  # the memory its job held is free again
                        self._admission().forget_worker(self.worker_names[(kind, index)])
                    except Exception as err:
                        log.warning("could not release the memory of worker %s.%d: %s", kind.value, index, err)
                    self._forget_metrics_of(proc.pid)
                    self._spawn(kind, index)

    def _forget_metrics_of(self, pid: int) -> None:
        if self.config.metrics_port:
            from runner.state import metrics

            metrics.worker_died(pid)

    def shutdown(self) -> None:
        self.stopping.set()
        # Refused: no job may finish here (its reports are refused); ended at once, as by a crash.
        sig = signal.SIGKILL if self.refused.is_set() else signal.SIGINT  # SIGINT: RQ finishes the job
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(sig)
        for proc in self.workers.values():
            stop(proc, timeout=10, sig=sig)
        if self.vllm is not None:
            self.vllm.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        if self._made_metrics_dir:
            metrics_files.remove(self.metrics_dir)


def main() -> None:
    logs.configure()  # HELIX_LOG_FORMAT: json (default) or text
    supervisor = Supervisor(RunnerConfig.from_env())

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    supervisor.on_refused = _thread.interrupt_main  # a KeyboardInterrupt in the main thread
    try:
        supervisor.start()
        supervisor.watch()
    except KeyboardInterrupt:
        log.info("stopping runner")
    finally:
        supervisor.shutdown()
    if supervisor.refused.is_set():
        raise SystemExit(supervisor.refusal)


if __name__ == "__main__":
    main()
