"""The runner's job watch (runner/job_watch.py): one thread per process looks at every running
job's hash in Redis, and stops a job at once when it was deleted or another worker holds it, or
when its deadline passes; a job that ended is never stopped after it left."""
from __future__ import annotations

import threading
import time

import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from runner.job_watch import DEADLINE, GONE, JobWatch

WATCH_SECONDS = 0.05


@pytest.fixture
def redis(services):
    redis = Redis.from_url(services["redis_url"].rsplit("/", 1)[0] + "/5")  # a database of its own
    yield redis
    redis.flushdb()


def _running_job(redis: Redis, n: int):
    """A job as a worker holds it while it runs (what RQ writes when a worker takes it)."""
    job = Queue("job-watch-test", connection=redis, serializer=JSONSerializer).enqueue(
        "runner.jobs.text_inference", {"n": n}, job_id=f"job-watch-{n}")
    with redis.pipeline() as pipe:
        job.prepare_for_execution(f"worker-{n}", pipe)
        pipe.execute()
    return job


def _watch_threads() -> int:
    return sum(t.name == "job-watch" for t in threading.enumerate())


def test_many_jobs_share_one_watching_thread_and_each_stops_alone(redis):
    jobs = [_running_job(redis, n) for n in range(40)]
    watches = [JobWatch(job, deadline_seconds=60, interval=WATCH_SECONDS) for job in jobs]
    for watch in watches:
        watch.__enter__()
    try:
        assert _watch_threads() == 1
        time.sleep(10 * WATCH_SECONDS)
        assert not any(w.stop.is_set() for w in watches)  # all still theirs
        jobs[3].delete()  # the control plane deleted its session
        redis.hset(jobs[7].key, "worker_name", "another-runner-0")  # queued again, taken elsewhere
        assert watches[3].stop.wait(2) and watches[7].stop.wait(2)
        assert watches[3].reason == GONE and watches[7].reason == GONE
        time.sleep(4 * WATCH_SECONDS)
        assert [n for n, w in enumerate(watches) if w.stop.is_set()] == [3, 7]
    finally:
        for watch in watches:
            watch.__exit__(None, None, None)


def test_a_deadline_stops_a_job_and_its_callbacks_run(redis):
    called = threading.Event()
    with JobWatch(_running_job(redis, 1), deadline_seconds=0.2, interval=WATCH_SECONDS) as watch:
        watch.on_stop(called.set)
        assert called.wait(2) and watch.reason == DEADLINE


def test_a_job_that_ended_is_not_stopped_after_it_left(redis):
    job = _running_job(redis, 2)
    called = threading.Event()
    with JobWatch(job, deadline_seconds=60, interval=WATCH_SECONDS) as watch:
        watch.on_stop(called.set)
    job.delete()  # as after the job finished
    assert not called.wait(10 * WATCH_SECONDS) and not watch.stop.is_set()
