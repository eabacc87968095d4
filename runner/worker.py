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

from runner import jobs
from runner.config import RunnerConfig
from runner.control_plane.client import ControlPlane
from runner.state import metrics
from runner.state.memory import Admission
from shared import logs
from shared.jobs import ENTRY_POINTS, QUEUES_OF_WORKER, WorkKind, queue_name
from shared.memory import JOB_META_KEY, MEMORY_WAIT_TTL_SECONDS, memory_wait_key, need_of
from shared.runners import HEARTBEAT_INTERVAL_SECONDS, HEARTBEAT_TTL_SECONDS, thread_worker_name, worker_alive_key

log = logging.getLogger(__name__)
ALLOWED_FUNCTIONS = frozenset(ENTRY_POINTS.values())
KIND_OF_FUNCTION = {function: kind.value for kind, function in ENTRY_POINTS.items()}
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
    each job is counted by kind and outcome (runner/state/metrics.py)."""

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


class OwnJobsOnly:
    """Records a job's outcome only while the job still names this worker. A job queued again
    while this worker ran it (its heartbeats lapsed in a long pause, say) belongs to the next
    attempt: marking it finished or failed here would end that attempt as well (the control plane
    refuses the updates of a job that no worker is running) and cost it one of its few attempts."""

    _performing = ""  # the id of the job this worker is running now

    def perform_job(self, job, queue):
        self._performing = job.id
        # Alive before the job shows as started: after Redis came back empty, the heartbeat may
        # not have written this worker's key again yet, and the reconciler would take this live
        # worker's job for a dead one's and queue it once more.
        try:
            self.connection.set(worker_alive_key(self.name), "1", ex=HEARTBEAT_TTL_SECONDS)
        except Exception as err:  # Redis away again: the heartbeat writes it when it is back
            log.warning("could not say worker %s is alive: %s", self.name, err)
        try:
            return super().perform_job(job, queue)
        finally:
            self._performing = ""

    def _ran_by_another(self, job: Job) -> bool:
        """Whether the job this worker ran has since been queued again (and maybe taken)."""
        return job.id == self._performing and self.connection.hget(job.key, "worker_name") != self.name.encode()

    def _let_go(self, job: Job) -> None:
        log.warning("job %s was queued again while worker %s ran it: leaving it to its next attempt",
                    job.id, self.name)
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe)  # this worker's own execution record only
            pipe.execute()

    def handle_job_success(self, job, queue, started_job_registry):
        if self._ran_by_another(job):
            return self._let_go(job)
        return super().handle_job_success(job, queue, started_job_registry)

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string=""):
        if self._ran_by_another(job):
            return self._let_go(job)
        return super().handle_job_failure(job, queue, started_job_registry, exc_string)


class AdmittingWorker(OwnJobsOnly, SimpleWorker):
    """A SimpleWorker that starts a job only when this runner's memory can hold it.

    A job that does not fit goes back to the front of its queue at once, where another runner's
    worker (blocked on the queue) can take it, and this worker waits `recheck_seconds` before it
    takes a job again: no busy loop, and the job never leaves Redis. Why it waits is noted in
    Redis for a few seconds, where the session's GET reads it."""

    admission: Admission | None = None
    memory_needs: dict = {}
    recheck_seconds: float = 2.0
    runner_id: str = ""

    def execute_job(self, job: Job, queue: Queue):
        kind = KIND_OF_FUNCTION.get(job.func_name)
        if self.admission is None or kind is None:  # not ours: AllowlistedJob refuses it
            return super().execute_job(job, queue)
        declared = job.meta.get(JOB_META_KEY)
        if not isinstance(declared, int):  # queued by an older control plane
            model = job.args[0].get("model", "") if job.args and isinstance(job.args[0], dict) else ""
            declared = need_of(self.memory_needs, model, kind)
        try:
            refusal = self.admission.admit(self.name, job.id, kind, declared)
        except Exception as err:  # Redis away for a moment: the job waits, the worker lives on
            refusal = f"could not check this runner's memory ({err})"
        if refusal:
            self._leave_queued(job, queue, refusal)
            return None
        try:
            return super().execute_job(job, queue)
        finally:
            self.admission.release(self.name, job.id)

    def _leave_queued(self, job: Job, queue: Queue, refusal: str) -> None:
        log.info("left job %s queued: %s", job.id, refusal)
        try:
            with self.connection.pipeline() as pipe:  # one MULTI: the job is in its queue, or still here
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)  # where a single-queue dequeue moved it
                pipe.lpush(queue.key, job.id)
                pipe.set(memory_wait_key(job.id), f"waiting for memory on runner {self.runner_id}: {refusal}",
                         ex=MEMORY_WAIT_TTL_SECONDS)
                pipe.execute()
        except Exception:
            log.exception("could not put job %s back in its queue", job.id)
        deadline = time.monotonic() + self.recheck_seconds
        while time.monotonic() < deadline and not self._stop_requested:
            time.sleep(0.05)


class ThreadWorker(AdmittingWorker):
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
    worker_class = AdmittingWorker if threads == 1 else ThreadWorker
    workers = [worker_class(queues, connection=redis, serializer=JSONSerializer,
                            job_class=AllowlistedJob, name=n) for n in names]
    admission = Admission(redis, config.runner_id, config.memory_limit_bytes)
    for worker in workers:
        worker.admission, worker.memory_needs = admission, config.memory_needs
        worker.recheck_seconds, worker.runner_id = config.memory_recheck_seconds, config.runner_id
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
    # httpx (vLLM's streamed replies) tells every request at INFO; one line per reply is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_worker(WorkKind(args.kind), args.name, RunnerConfig.from_env(), args.vllm_url, max(1, args.threads))


if __name__ == "__main__":
    main()
