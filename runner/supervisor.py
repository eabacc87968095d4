"""`helix runner`: supervises the runner node's processes.

Starts the vLLM server for the text model, one text worker process keeping K jobs in flight
against it (one RQ worker per thread), the fine-tune workers, and one image worker holding the
diffusers pipeline. Restarts a worker that dies; stops everything on
SIGTERM/SIGINT; and every child carries a parent-death signal, so a runner killed with SIGKILL
leaves nothing behind (its jobs are re-queued by the control plane when heartbeats stop).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from redis import Redis

from runner import image_calibration, memory
from runner.config import RunnerConfig
from runner.control_plane import ControlPlane
from runner.vllm_server import VllmServer
from shared.jobs import WorkKind
from shared.processes import die_with_parent, stop
from shared.runners import worker_alive_key, worker_name

log = logging.getLogger("runner")


class Supervisor:
    def __init__(self, config: RunnerConfig):
        self.config = config
        os.environ["HELIX_RUNNER_ID"] = config.runner_id  # its workers report under the same name
        self.client = ControlPlane(config.api_url, config.token, config.runner_id)
        self.vllm: VllmServer | None = None
        self.workers: dict[tuple[WorkKind, int], subprocess.Popen] = {}
        self.worker_names: dict[tuple[WorkKind, int], str] = {}
        self.stopping = threading.Event()
        self.announced = 0.0

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
        self.client.register(models, info)
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
            cmd += ["--threads", str(self.config.text_workers)]
        # SIGKILL, not SIGTERM: RQ treats SIGTERM as "finish the current job first", and a
        # runner that died must not keep a job (and its heartbeat) alive in an orphan.
        self.workers[(kind, index)] = subprocess.Popen(cmd, preexec_fn=die_with_parent(signal.SIGKILL))

    def start(self) -> None:
        image_calibration.forget(self.config)
        self._admission().clear()  # none of this runner's jobs runs any more
        self.register()
        if self.config.text_model:
            self.vllm = VllmServer(
                self.config.text_model_path or self.config.text_model, self.config.text_model,
                port=self.config.vllm_port, max_model_len=self.config.max_model_len,
                kv_cache_gib=self.config.kv_cache_gib, extra_args=self.config.vllm_args,
                log_dir=Path(self.config.log_dir) if self.config.log_dir else None,
            ).start()
        if self.vllm is not None:
            log.info("vLLM healthy after %.1fs", self.vllm.wait_ready())
            if self.config.text_workers > 0:
                self._spawn(WorkKind.TEXT_INFERENCE, 0)
            for i in range(self.config.finetune_workers):
                self._spawn(WorkKind.TEXT_FINETUNE, i)
        if self.config.image_model:  # after vLLM's start-up, which would skew the pipeline's measurement
            self._spawn(WorkKind.IMAGE_INFERENCE, 0)
            for i in range(self.config.image_finetune_workers):  # each run trains in its own child
                self._spawn(WorkKind.IMAGE_FINETUNE, i)
        self._wait_for_workers()
        if self.config.image_model:
            self.register()  # with the image budget the image worker measured before it listened
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

    def watch(self) -> None:
        """Restart what dies until asked to stop; tell the control plane now and then that this
        runner is still here (its `last_seen`)."""
        while not self.stopping.wait(1.0):
            if time.monotonic() - self.announced >= self.config.register_interval:
                try:
                    self._announce()
                except requests.RequestException as err:
                    log.warning("could not tell the control plane this runner is alive: %s", err)
                    self.announced = time.monotonic()  # try again at the next interval
            if self.vllm is not None and not self.vllm.alive():
                log.error("vLLM exited (%s); restarting it", self.vllm.proc.returncode)
                self.vllm.stop()  # what is left of its process group
                self.vllm.start()
                log.info("vLLM healthy again after %.1fs", self.vllm.wait_ready())
            for (kind, index), proc in list(self.workers.items()):
                if proc.poll() is not None and not self.stopping.is_set():
                    log.error("worker %s.%d exited with %s; restarting", kind.value, index, proc.returncode)
                    try:  # the memory its job held is free again
                        self._admission().forget_worker(self.worker_names[(kind, index)])
                    except Exception as err:
                        log.warning("could not release the memory of worker %s.%d: %s", kind.value, index, err)
                    self._spawn(kind, index)

    def shutdown(self) -> None:
        self.stopping.set()
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # RQ: finish the current job, then exit
        for proc in self.workers.values():
            stop(proc, timeout=10, sig=signal.SIGINT)
        if self.vllm is not None:
            self.vllm.stop()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    supervisor = Supervisor(RunnerConfig.from_env())

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        supervisor.start()
        supervisor.watch()
    except KeyboardInterrupt:
        log.info("stopping runner")
    finally:
        supervisor.shutdown()


if __name__ == "__main__":
    main()
