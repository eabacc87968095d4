"""One runner worker process: RQ SimpleWorkers on the queues of one kind of work and model.

SimpleWorker runs jobs in this process (no fork per job), so the model it holds stays warm.
A text worker process keeps many jobs in flight against its vLLM server: it runs one
SimpleWorker per thread (HELIX_TEXT_WORKERS of them, 64 by default), each a full RQ worker with
its own name, registries and retries, blocked on the queue while idle and on vLLM while busy.
RQ 2.12 has no worker that runs several jobs at once in one process (its WorkerPool starts
processes, and one worker running a thread pool tracks a single execution), while N
SimpleWorkers in N threads keep every RQ semantic; they skip RQ's signal handlers (only the
main thread may install them; it owns SIGTERM/SIGINT here) and time jobs out with RQ's
TimerDeathPenalty instead of SIGALRM.

Jobs are JSON and only the runner's own entry points run. A heartbeat thread keeps every
worker's liveness key fresh; when the process dies the keys expire and the control plane's
reconciler queues the jobs it held again.
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading
import time

from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.worker import WorkerStatus

from runner import jobs, metrics
from runner.config import RunnerConfig
from runner.control_plane import ControlPlane
from shared import logs
from shared.jobs import ENTRY_POINTS, WorkKind, queue_name
from shared.runners import HEARTBEAT_INTERVAL_SECONDS, HEARTBEAT_TTL_SECONDS, thread_worker_name, worker_alive_key

log = logging.getLogger(__name__)
ALLOWED_FUNCTIONS = frozenset(ENTRY_POINTS.values())
KIND_OF_FUNCTION = {function: kind.value for kind, function in ENTRY_POINTS.items()}
# The queues each kind of worker takes work from, first listed first served: text workers
# prepare fine-tune data on the warm vLLM server between chats, never before them.
QUEUES_OF_WORKER = {
    WorkKind.TEXT_INFERENCE: (WorkKind.TEXT_INFERENCE, WorkKind.TEXT_DATAPREP),
    WorkKind.IMAGE_INFERENCE: (WorkKind.IMAGE_INFERENCE,),
    WorkKind.TEXT_FINETUNE: (WorkKind.TEXT_FINETUNE,),
    WorkKind.IMAGE_FINETUNE: (WorkKind.IMAGE_FINETUNE,),
}
IMAGE_KINDS = (WorkKind.IMAGE_INFERENCE, WorkKind.IMAGE_FINETUNE)
# How long a stopping process waits for its running jobs to finish before it leaves them to
# the reconciler (which queues them again once the workers' liveness keys are gone).
STOP_GRACE_SECONDS = 8


class RefusedJob(Exception):
    pass


def _outcome(result) -> str:
    """What a job's return value says: the entry points return {"error": ...} for a refusal the
    user reads and {"skipped": ...} when the interaction was gone."""
    if isinstance(result, dict) and "error" in result:
        return "error"
    return "skipped" if isinstance(result, dict) and "skipped" in result else "complete"


class AllowlistedJob(Job):
    """Anyone who can write to Redis can name any callable in a job: run only our entry points.
    Every log record written while a job runs carries its job, session and interaction ids, and
    each job is counted by kind and outcome (runner/metrics.py)."""

    def _execute(self):
        if self.func_name not in ALLOWED_FUNCTIONS:
            raise RefusedJob(f"refused job {self.id}: {self.func_name!r} is not a runner entry point")
        payload = self.args[0] if self.args and isinstance(self.args[0], dict) else {}
        kind = KIND_OF_FUNCTION[self.func_name]
        started = time.monotonic()
        with logs.bound(job_id=self.id, session_id=str(payload.get("session_id") or ""),
                        interaction_id=str(payload.get("interaction_id") or "")):
            log.info("job %s (%s) started", self.id, kind)
            try:
                result = super()._execute()
            except BaseException as err:
                metrics.JOBS.labels(kind, "failed").inc()
                log.warning("job %s (%s) failed after %.2fs: %r", self.id, kind, time.monotonic() - started, err)
                raise
            finally:
                metrics.JOB_SECONDS.labels(kind).observe(time.monotonic() - started)
            outcome = _outcome(result)
            metrics.JOBS.labels(kind, outcome).inc()
            log.info("job %s (%s) %s after %.2fs", self.id, kind, outcome, time.monotonic() - started)
        return result


class ThreadWorker(SimpleWorker):
    """A SimpleWorker that shares its process with others, one per thread."""

    death_penalty_class = TimerDeathPenalty  # SIGALRM reaches only the main thread

    def _install_signal_handlers(self) -> None:
        """Signals belong to the process's main thread, which stops every worker."""


def _heartbeat(redis: Redis, keys: list[str], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(key, "1", ex=HEARTBEAT_TTL_SECONDS)
                pipe.execute()
        except Exception as err:
            log.warning("heartbeat failed: %s", err)
        stop.wait(HEARTBEAT_INTERVAL_SECONDS)


def _work(worker: SimpleWorker) -> None:
    try:
        worker.work(logging_level="WARNING", with_scheduler=False)
    except Exception:
        log.exception("worker %s stopped", worker.name)


def run_worker(kind: WorkKind, name: str, config: RunnerConfig, vllm_url: str = "", threads: int = 1) -> None:
    model = config.image_model if kind in IMAGE_KINDS else config.text_model
    # Each idle worker holds one connection in a blocking pop; jobs need a few more.
    redis = Redis.from_url(config.redis_url, health_check_interval=30, max_connections=4 * threads + 16)
    client = ControlPlane(config.api_url, config.token, config.runner_id, pool_size=threads)
    jobs.init_context(kind, config, client, vllm_url, pool_size=threads, redis=redis)
    queues = [Queue(queue_name(k, model), connection=redis, serializer=JSONSerializer)
              for k in QUEUES_OF_WORKER[kind]]
    names = [name] if threads == 1 else [thread_worker_name(name, t) for t in range(threads)]
    worker_class = SimpleWorker if threads == 1 else ThreadWorker
    workers = [worker_class(queues, connection=redis, serializer=JSONSerializer,
                            job_class=AllowlistedJob, name=n) for n in names]
    # The process's own name too: the supervisor waits for it to know the process is up.
    keys = [worker_alive_key(n) for n in dict.fromkeys([name, *names])]
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(redis, keys, stop), daemon=True, name="heartbeat").start()
    log.info("worker %s: %d job%s at once from %s", name, threads, "s" * (threads > 1),
             ", ".join(q.name for q in queues))
    try:
        if threads == 1:
            workers[0].work(logging_level="WARNING", with_scheduler=False)
        else:
            _run_threads(workers)
    finally:
        stop.set()
        redis.delete(*keys)


def _run_threads(workers: list[SimpleWorker]) -> None:
    """Runs every worker in a thread of its own until SIGTERM or SIGINT; then lets running jobs
    finish for a few seconds and records the workers' deaths (idle ones are blocked in a
    dequeue that would not return for minutes)."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    for worker in workers:
        threading.Thread(target=_work, args=(worker,), daemon=True, name=worker.name).start()
    stopping.wait()
    for worker in workers:
        worker._stop_requested = True  # RQ's own flag: take no further job
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline and any(w.get_state() == WorkerStatus.BUSY for w in workers):
        time.sleep(0.1)
    for worker in workers:
        try:
            worker.register_death()
        except Exception as err:
            log.warning("could not record the end of %s: %s", worker.name, err)


def main() -> None:
    p = argparse.ArgumentParser(description="one runner worker process (started by the supervisor)")
    p.add_argument("--kind", required=True, choices=[k.value for k in WorkKind])
    p.add_argument("--name", required=True, help="this worker's name, from shared.runners.worker_name()")
    p.add_argument("--vllm-url", default="")
    p.add_argument("--threads", type=int, default=1, help="jobs in flight at once, one RQ worker per thread")
    args = p.parse_args()
    logs.configure()  # HELIX_LOG_FORMAT: json (default) or text
    run_worker(WorkKind(args.kind), args.name, RunnerConfig.from_env(), args.vllm_url, max(1, args.threads))


if __name__ == "__main__":
    main()
