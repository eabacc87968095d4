"""The reconciler makes Redis agree with PostgreSQL (no runner: jobs stay queued or are faked
as started by a worker whose heartbeat is gone)."""
from __future__ import annotations

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from controlplane.runners.reconciler import MAX_ATTEMPTS, Reconciler
from shared.jobs import job_id_for
from shared.runners import worker_alive_key


@pytest.fixture()
def reconciler(app):
    r = Reconciler(app)
    r.grace_seconds = 0
    return r


@pytest.fixture()
def redis(config):
    return Redis.from_url(config.redis_url)


def new_session(client, user) -> tuple[str, str]:
    s = client.post("/api/v1/sessions", headers=user.headers,
                    data={"input": "hi", "mode": "inference", "type": "text"}).json
    return s["id"], s["interactions"][-1]["id"]


def fetch(redis, interaction_id):
    return Job.fetch(job_id_for(interaction_id), connection=redis, serializer=JSONSerializer)


def test_job_lost_by_redis_is_queued_again(client, user, reconciler, redis):
    _, iid = new_session(client, user)
    fetch(redis, iid).delete()  # as after a Redis restart without persistence
    assert reconciler.run_once()[iid] == "requeued-missing"
    job = fetch(redis, iid)
    assert job.get_status() == "queued" and job.args[0]["interaction_id"] == iid
    assert reconciler.run_once()[iid] == "queued"  # nothing more to do


def test_job_of_a_dead_worker_is_queued_again_then_given_up(client, user, reconciler, redis, db):
    sid, iid = new_session(client, user)
    for attempt in range(2, MAX_ATTEMPTS + 2):
        job = fetch(redis, iid)
        job.set_status("started")
        job.worker_name = "ghost-runner.text-inference.0"
        job.save()
        redis.delete(worker_alive_key(job.worker_name))
        result = reconciler.run_once()[iid]
        if attempt <= MAX_ATTEMPTS:
            assert result == "requeued-dead-worker"
            assert fetch(redis, iid).get_status() == "queued"
            status = db.execute("SELECT status FROM interactions WHERE id = %s", (iid,)).fetchone()["status"]
            assert status == "queued again (runner worker ghost-runner.text-inference.0 died)"
    row = db.execute("SELECT state, finished, error, metadata FROM interactions WHERE id = %s", (iid,)).fetchone()
    assert row["state"] == "error" and row["finished"]
    assert "gave up" in row["error"] and row["metadata"]["attempts"] == MAX_ATTEMPTS


def test_job_of_a_live_worker_is_left_alone(client, user, reconciler, redis):
    _, iid = new_session(client, user)
    job = fetch(redis, iid)
    job.set_status("started")
    job.worker_name = "busy-runner.text-inference.0"
    job.save()
    redis.set(worker_alive_key(job.worker_name), "1", ex=30)
    assert reconciler.run_once()[iid] == "running"


def test_jobs_of_live_workers_cost_no_transaction_each(client, user, reconciler, redis, monkeypatch):
    """A runner holds a hundred chats at once: their jobs and workers are read in two round
    trips, and only an interaction that may need something done is checked one by one."""
    ids = [new_session(client, user)[1] for _ in range(20)]
    for n, iid in enumerate(ids):
        job = fetch(redis, iid)
        job.set_status("started")
        job.worker_name = f"{'gone' if n == 7 else 'busy'}-runner.text-inference.{n}"
        job.save()
        if n != 7:
            redis.set(worker_alive_key(job.worker_name), "1", ex=30)
    checked = []
    check = reconciler.check
    monkeypatch.setattr(reconciler, "check", lambda conn, iid, *rest: checked.append(iid) or check(conn, iid, *rest))
    results = reconciler.run_once()
    assert [iid for iid in checked if iid in ids] == [ids[7]]  # (other tests leave interactions too)
    assert results[ids[7]] == "requeued-dead-worker"
    assert all(results[iid] == "running" for n, iid in enumerate(ids) if n != 7)


def test_failed_job_ends_the_interaction_with_an_error(client, user, reconciler, redis, db):
    _, iid = new_session(client, user)
    job = fetch(redis, iid)
    job.set_status("failed")
    assert reconciler.run_once()[iid] == "failed"
    row = db.execute("SELECT state, finished FROM interactions WHERE id = %s", (iid,)).fetchone()
    assert (row["state"], row["finished"]) == ("error", True)


def test_an_interaction_changed_moments_ago_is_left_to_whoever_changed_it(client, user, reconciler, redis, db):
    # A fine-tune retried or approved a moment ago: its old job is finished (or its new one not
    # queued yet) while the request that reopened it is still enqueueing. Not a lost job.
    sid, iid = new_session(client, user)
    fetch(redis, iid).delete()
    reconciler.grace_seconds = 30
    assert iid not in reconciler.run_once()
    assert reconciler.check(db, iid, sid, user.id) == "recent"
    db.execute("UPDATE interactions SET updated = now() - interval '1 minute' WHERE id = %s", (iid,))
    assert reconciler.check(db, iid, sid, user.id) == "requeued-missing"


def test_an_interaction_in_review_waits_for_its_user(client, user, reconciler, redis, db):
    sid, iid = new_session(client, user)
    fetch(redis, iid).set_status("finished")  # as a fine-tune's data preparation ends
    db.execute("UPDATE interactions SET state = 'editing' WHERE id = %s", (iid,))
    assert reconciler.check(db, iid, sid, user.id) == "waiting-for-user"
    assert fetch(redis, iid).get_status() == "finished"


def test_only_one_pass_runs_at_a_time(client, user, reconciler, redis):
    _, iid = new_session(client, user)
    fetch(redis, iid).delete()
    redis.set("helix:reconciler:lock", "1", ex=30)  # another replica is mid-pass
    try:
        assert reconciler.run_once() == {}
    finally:
        redis.delete("helix:reconciler:lock")
    assert reconciler.run_once()[iid] == "requeued-missing"


def test_every_unfinished_interaction_is_checked_page_by_page(client, make_user, reconciler, redis):
    reconciler.page_size = 2
    user = make_user()
    lost = [new_session(client, user)[1] for _ in range(5)]
    for iid in lost:
        fetch(redis, iid).delete()
    results = reconciler.run_once()
    assert all(results[iid] == "requeued-missing" for iid in lost), results


def test_a_job_taken_off_its_queue_and_never_started_is_queued_again(client, user, reconciler, redis, db):
    # A worker paused (or cut off) in mid-dequeue: Redis handed it the job, which stays "queued"
    # on no queue, and nothing would ever run it.
    _, iid = new_session(client, user)
    job = fetch(redis, iid)
    redis.lrem(f"rq:queue:{job.origin}", 0, job.id)
    assert reconciler.run_once()[iid] == "queued-unlisted"  # a worker may be marking it started now
    assert reconciler.run_once()[iid] == "requeued-unstarted"
    assert reconciler.run_once()[iid] == "queued"
    row = db.execute("SELECT status, metadata FROM interactions WHERE id = %s", (iid,)).fetchone()
    assert row["status"] == "queued again (job taken from the queue but never started)"
    assert row["metadata"].get("attempts", 1) == 1  # it never ran: not an attempt
