"""P2: from the answer to POST /api/v1/sessions to the moment a runner starts the job, on an idle
warm runner; the floor is the same for a job put on the runner's queue with RQ directly.

"Starts the job" is RQ's own record: the `started_at` a worker writes into the job's hash when it
takes the job (before the job's code runs), in UTC with microseconds; both clocks are this
machine's. It can come before the POST's answer reaches the client (the job is queued before the
answer is written): then the figure is negative, and counted as it is.

One sample at a time, each waiting until its job has finished (a 1-token reply), alternating the
two paths. The floor's job is a real chat job for an interaction that does not exist, so the
runner stops at its first report: only the queue is measured.
"""
from __future__ import annotations

import time
import uuid

import requests
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from bench.report import Figure, percentile, spread
from bench.stack import BenchStack
from shared.jobs import ENTRY_POINTS, TextInferenceJob, WorkKind, job_id_for, queue_name

GOAL_P50_MS, GOAL_P99_MS = 25.0, 100.0
DONE = {b"finished", b"failed", b"stopped", b"canceled"}


def _wait_started(redis: Redis, job_id: str, timeout: float = 120) -> float:
    """Waits for the job to end; returns when a worker started it (epoch seconds)."""
    key = Job.key_for(job_id)
    deadline = time.monotonic() + timeout
    while True:
        status, started = redis.hmget(key, "status", "started_at")
        if status in DONE and started:
            return utcparse(started.decode()).timestamp()
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not done after {timeout}s (status {status!r})")
        time.sleep(0.005)


def measure(stack: BenchStack, figure: Figure, *, samples: int, model: str, **_) -> None:
    stack.runner()
    (_, key), = stack.users(1, "p2")
    redis = Redis.from_url(stack.vk.url)
    http = requests.Session()
    headers = {"Authorization": f"Bearer {key}"}
    queue = Queue(queue_name(WorkKind.TEXT_INFERENCE, model), connection=redis, serializer=JSONSerializer)
    warmup = 3
    figure.model = model
    figure.inputs = {"samples": samples, "warmup": warmup, "tokens": 1, "runner": "idle, warm",
                     "started": "RQ job started_at"}

    def via_platform(i: int) -> float:
        r = http.post(f"{stack.api.url}/api/v1/sessions", headers=headers, timeout=30,
                      data={"input": f"Say hello, number {i}.", "mode": "inference", "type": "text", "max_tokens": "1"})
        answered = time.time()
        if r.status_code != 201:
            raise RuntimeError(f"POST /api/v1/sessions: {r.status_code} {r.text[:300]}")
        return _wait_started(redis, job_id_for(r.json()["interactions"][-1]["id"])) - answered

    def via_rq(i: int) -> float:
        payload = TextInferenceJob(session_id=str(uuid.uuid4()), interaction_id=str(uuid.uuid4()), model=model,
                                   messages=[{"role": "user", "content": f"Say hello, number {i}."}], max_tokens=1)
        job = queue.enqueue_call(ENTRY_POINTS[WorkKind.TEXT_INFERENCE], args=(payload.to_dict(),),
                                 job_id=f"bench-floor-{uuid.uuid4().hex}", result_ttl=600, failure_ttl=600)
        enqueued = time.time()
        return _wait_started(redis, job.id) - enqueued

    platform, floor = [], []
    for i in range(warmup + samples):
        p, f = via_platform(i), via_rq(i)
        if i >= warmup:
            platform.append(p * 1000)
            floor.append(f * 1000)
        time.sleep(0.05)  # idle between samples
    figure.platform = spread(platform, "ms", 1)
    figure.baseline = spread(floor, "ms", 1)
    p50, p99 = percentile(platform, 50), percentile(platform, 99)
    figure.result = {"p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
                     "floor_p50_ms": round(percentile(floor, 50), 1), "floor_p99_ms": round(percentile(floor, 99), 1)}
    if samples < 100:
        figure.notes.append(f"p99 of {samples} samples is their maximum, or near it")
    figure.judge(p50 <= GOAL_P50_MS and p99 <= GOAL_P99_MS)
