"""Fair share of the fleet: a user's jobs past their share of a queue's workers wait in PostgreSQL,
oldest first, and are released as that user's jobs end, so another user's new job goes ahead of
the backlog. Decisions hold across concurrent requests, and the reconciler releases what runners
that joined since can take (no runner here: jobs stay where they are put)."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from controlplane.runners.reconciler import Reconciler
from shared.jobs import WorkKind, job_id_for, queue_name
from tests.conftest import app_with, runner_auth


@pytest.fixture()
def served(config, tmp_path_factory, api_runner_token):
    """An in-process app whose text model a (silent) runner serves with `workers` text workers."""
    def make(workers: int | None):
        model = f"helix/shared-{uuid.uuid4().hex[:8]}"
        app = app_with(config, tmp_path_factory, text_models=[model])
        if workers is not None:
            _register(app, api_runner_token, model, workers)
        return app, model
    return make


def _register(app, token: str, model: str, workers: int, runner: str = "a") -> None:
    r = app.test_client().post("/api/v1/runner/register", headers=runner_auth(token), json={
        "runner_id": f"runner-{runner}-{model[-8:]}", "models": {"text": [model]},
        "state": {"workers": {"text-inference": workers}}})
    assert r.status_code == 200, r.get_json()


def _queued(config, model: str) -> list[str]:
    return Queue(queue_name(WorkKind.TEXT_INFERENCE, model), connection=Redis.from_url(config.redis_url),
                 serializer=JSONSerializer).get_job_ids()


def _chat(client, user) -> tuple[str, str]:
    r = client.post("/api/v1/sessions", headers=user.headers, data={"input": "hello", "mode": "inference",
                                                                    "type": "text"})
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"], r.get_json()["interactions"][-1]["id"]


def _turn(client, user, sid: str) -> dict:
    return client.get(f"/api/v1/sessions/{sid}", headers=user.headers).get_json()["interactions"][-1]


def test_a_users_backlog_waits_in_postgresql_and_another_users_job_goes_ahead(served, config, make_user):
    app, model = served(workers=2)
    client, alice, bob = app.test_client(), make_user(), make_user()
    alice_chats = [_chat(client, alice) for _ in range(5)]
    # Alone, Alice's share is both workers: two jobs queued in Redis, three held in PostgreSQL.
    assert _queued(config, model) == [job_id_for(iid) for _, iid in alice_chats[:2]]
    for n, (sid, _) in enumerate(alice_chats[2:]):
        turn = _turn(client, alice, sid)
        assert turn["waiting_reason"] == f"{n + 2} of your own jobs ahead", turn
        assert turn["queue_position"] == 2 + n  # the two in the queue, then her held ones before it
    queue = queue_name(WorkKind.TEXT_INFERENCE, model)
    metric = f'helix_queue_held_jobs{{kind="text-inference",model="{model}",queue="{queue}"}} 3.0'
    assert metric in client.get("/metrics").get_data(as_text=True)

    # Bob's first chat is queued at once, ahead of the three Alice still has waiting.
    bob_sid, bob_iid = _chat(client, bob)
    assert _queued(config, model) == [job_id_for(iid) for _, iid in alice_chats[:2]] + [job_id_for(bob_iid)]
    assert _turn(client, bob, bob_sid)["waiting_reason"] == "2 jobs ahead"

    # Two users share two workers: one each. Alice's next is released only when both of hers end.
    assert client.post(f"/api/v1/sessions/{alice_chats[0][0]}/cancel", headers=alice.headers).status_code == 200
    assert _queued(config, model) == [job_id_for(alice_chats[1][1]), job_id_for(bob_iid)]
    assert client.post(f"/api/v1/sessions/{alice_chats[1][0]}/cancel", headers=alice.headers).status_code == 200
    assert _queued(config, model) == [job_id_for(bob_iid), job_id_for(alice_chats[2][1])]
    assert _turn(client, alice, alice_chats[3][0])["waiting_reason"] == "1 of your own jobs ahead"


def test_no_worker_idles_while_work_waits(served, config, make_user):
    app, model = served(workers=4)
    client, alice, bob = app.test_client(), make_user(), make_user()
    _, bob_iid = _chat(client, bob)
    alice_chats = [_chat(client, alice) for _ in range(6)]
    # Alice's share of four workers beside Bob is two, but Bob keeps only one busy: she takes three.
    assert _queued(config, model) == [job_id_for(bob_iid)] + [job_id_for(iid) for _, iid in alice_chats[:3]]


def test_deleting_a_session_releases_its_owners_next_job_at_once(served, config, make_user):
    app, model = served(workers=1)
    client, alice = app.test_client(), make_user()
    chats = [_chat(client, alice) for _ in range(3)]
    assert _queued(config, model) == [job_id_for(chats[0][1])]
    assert client.delete(f"/api/v1/sessions/{chats[0][0]}", headers=alice.headers).status_code == 200
    assert _queued(config, model) == [job_id_for(chats[1][1])]  # not at the reconciler's next pass


def test_concurrent_requests_release_exactly_the_share(served, config, make_user, db):
    app, model = served(workers=3)
    user = make_user()

    def chat(_):
        return _chat(app.test_client(), user)[1]

    with ThreadPoolExecutor(8) as pool:
        iids = list(pool.map(chat, range(16)))
    queued = _queued(config, model)
    assert len(queued) == 3 and len(set(queued)) == 3 and set(queued) <= {job_id_for(i) for i in iids}
    released = db.execute("SELECT count(*) AS n FROM queued_work WHERE owner = %s AND released IS NOT NULL",
                          (user.id,)).fetchone()["n"]
    assert released == 3


def test_the_reconciler_releases_held_jobs_once_runners_can_take_them(served, config, make_user, db,
                                                                       api_runner_token):
    # While no runner has reported workers for a queue, there is nothing to share: nothing is held.
    app, model = served(workers=None)
    client, user = app.test_client(), make_user()
    chats = [_chat(client, user) for _ in range(3)]
    assert _queued(config, model) == [job_id_for(iid) for _, iid in chats]

    app, model = served(workers=1)
    client = app.test_client()
    chats = [_chat(client, user) for _ in range(4)]
    assert _queued(config, model) == [job_id_for(chats[0][1])]
    assert _turn(client, user, chats[3][0])["waiting_reason"] == "3 of your own jobs ahead"

    _register(app, api_runner_token, model, workers=2, runner="b")  # a second runner joins
    reconciler = Reconciler(app)
    reconciler.grace_seconds = 0
    results = reconciler.run_once()
    assert all(results.get(iid) != "requeued-missing" for _, iid in chats), results
    assert _queued(config, model) == [job_id_for(iid) for _, iid in chats[:3]]
    # Held work is not the reconciler's to check job by job; its share is full: nothing changes.
    assert chats[3][1] not in reconciler.run_once()
    assert _queued(config, model) == [job_id_for(iid) for _, iid in chats[:3]]
    assert reconciler.check(db, chats[3][1], chats[3][0], user.id) == "held"

    # Redis loses its queue (a restart without persistence): released jobs are queued again, the
    # held one stays held.
    Redis.from_url(config.redis_url).delete(f"rq:queue:{queue_name(WorkKind.TEXT_INFERENCE, model)}")
    for _, iid in chats[:3]:
        Redis.from_url(config.redis_url).delete(f"rq:job:{job_id_for(iid)}")
    results = reconciler.run_once()
    assert [results[iid] for _, iid in chats[:3]] == ["requeued-missing"] * 3 and chats[3][1] not in results
    assert sorted(_queued(config, model)) == sorted(job_id_for(iid) for _, iid in chats[:3])
