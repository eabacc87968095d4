"""One runner worker process: an RQ SimpleWorker on the queue of one kind of work and model.

SimpleWorker runs jobs in this process (no fork per job), so the model it holds stays warm.
Jobs are JSON and only the runner's own entry points run. A heartbeat thread keeps the
worker's liveness key fresh; when the process dies the key expires and the control plane's
reconciler queues the job it held again.
"""
from __future__ import annotations

import argparse
import logging
import threading

from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from runner import jobs
from runner.config import RunnerConfig
from runner.control_plane import ControlPlane
from shared.jobs import ENTRY_POINTS, WorkKind, queue_name
from shared.runners import HEARTBEAT_INTERVAL_SECONDS, HEARTBEAT_TTL_SECONDS, worker_alive_key

log = logging.getLogger(__name__)
ALLOWED_FUNCTIONS = frozenset(ENTRY_POINTS.values())
# The queues each kind of worker takes work from, first listed first served: text workers
# prepare fine-tune data on the warm vLLM server between chats, never before them.
QUEUES_OF_WORKER = {
    WorkKind.TEXT_INFERENCE: (WorkKind.TEXT_INFERENCE, WorkKind.TEXT_DATAPREP),
    WorkKind.IMAGE_INFERENCE: (WorkKind.IMAGE_INFERENCE,),
    WorkKind.TEXT_FINETUNE: (WorkKind.TEXT_FINETUNE,),
    WorkKind.IMAGE_FINETUNE: (WorkKind.IMAGE_FINETUNE,),
}
IMAGE_KINDS = (WorkKind.IMAGE_INFERENCE, WorkKind.IMAGE_FINETUNE)


class RefusedJob(Exception):
    pass


class AllowlistedJob(Job):
    """Anyone who can write to Redis can name any callable in a job: run only our entry points."""

    def _execute(self):
        if self.func_name not in ALLOWED_FUNCTIONS:
            raise RefusedJob(f"refused job {self.id}: {self.func_name!r} is not a runner entry point")
        return super()._execute()


def _heartbeat(redis: Redis, key: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            redis.set(key, "1", ex=HEARTBEAT_TTL_SECONDS)
        except Exception as err:
            log.warning("heartbeat failed: %s", err)
        stop.wait(HEARTBEAT_INTERVAL_SECONDS)


def run_worker(kind: WorkKind, name: str, config: RunnerConfig, vllm_url: str = "") -> None:
    model = config.image_model if kind in IMAGE_KINDS else config.text_model
    client = ControlPlane(config.api_url, config.token, config.runner_id)
    jobs.init_context(kind, config, client, vllm_url)

    redis = Redis.from_url(config.redis_url, health_check_interval=30)
    queues = [Queue(queue_name(k, model), connection=redis, serializer=JSONSerializer)
              for k in QUEUES_OF_WORKER[kind]]
    worker = SimpleWorker(queues, connection=redis, serializer=JSONSerializer,
                          job_class=AllowlistedJob, name=name)
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(redis, worker_alive_key(worker.name), stop),
                     daemon=True, name="heartbeat").start()
    log.info("worker %s listening on %s", worker.name, ", ".join(q.name for q in queues))
    try:
        worker.work(logging_level="WARNING", with_scheduler=False)
    finally:
        stop.set()
        redis.delete(worker_alive_key(worker.name))


def main() -> None:
    p = argparse.ArgumentParser(description="one runner worker process (started by the supervisor)")
    p.add_argument("--kind", required=True, choices=[k.value for k in WorkKind])
    p.add_argument("--name", required=True, help="this worker's name, from shared.runners.worker_name()")
    p.add_argument("--vllm-url", default="")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_worker(WorkKind(args.kind), args.name, RunnerConfig.from_env(), args.vllm_url)


if __name__ == "__main__":
    main()
