"""Serving at scale, as behaviour (the speed figures live in bench/): one runner keeps hundreds of
chats in flight and loses none when killed; the control plane holds hundreds of live streams;
a client that connects mid-reply gets the whole text exactly once."""
from __future__ import annotations

import asyncio
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest
import requests
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry

from shared.jobs import WorkKind, job_id_for, queue_name
from shared.runners import runner_of_worker
from shared.updates import partial_text_key
from tests.conftest import freeze, read_events, start_runner, thaw, vllm_server, wait_for_session, wait_until

WIDE_MODEL = "helix/tiny-chat-wide"  # served only by this module's runner
# Replies run to max_tokens, so that each takes a while and its length is known.
FULL_LENGTH = {"HELIX_SAMPLING_EXTRA": json.dumps({"ignore_eos": True})}


@pytest.fixture(scope="module")
def wide_runner(live_server, services, runner_token, models_dir, tmp_path_factory):
    """A runner with 256 text jobs in flight at once, in one worker process."""
    proc = start_runner(live_server, services, runner_token, models_dir, tmp_path_factory.mktemp("wide-runner"),
                        runner_id="runner-wide", text_model=WIDE_MODEL,
                        extra_env={"HELIX_TEXT_WORKERS": "256", **FULL_LENGTH})
    proc.wait_for_log("ready:", timeout=300)
    yield proc
    proc.stop()


def create_sessions(base_url, user, model, count, max_tokens=16) -> list[str]:
    def create(n: int) -> str:
        r = requests.post(f"{base_url}/api/v1/sessions", headers=user.headers, timeout=30,
                          data={"input": f"chat number {n}", "mode": "inference", "type": "text",
                                "model_name": model, "max_tokens": str(max_tokens)})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(create, range(count)))


def registries(redis_url: str, model: str) -> tuple[StartedJobRegistry, FailedJobRegistry]:
    queue = Queue(queue_name(WorkKind.TEXT_INFERENCE, model), connection=Redis.from_url(redis_url))
    return StartedJobRegistry(queue=queue), FailedJobRegistry(queue=queue)


def wait_started(started: StartedJobRegistry, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while started.count < count:
        assert time.monotonic() < deadline, f"only {started.count} of {count} jobs started"
        time.sleep(0.2)


def assert_registries_drain(started: StartedJobRegistry, failed: FailedJobRegistry) -> None:
    """A job leaves RQ's started registry a moment after its final update has reached the
    session (the worker records its success after the job returns): wait for that moment, far
    shorter than the job timeout a stray entry would linger for, and no job may have failed."""
    wait_until(lambda: started.count == 0, 30, "RQ's started registry empty",
               detail=lambda: started.get_job_ids())
    assert failed.count == 0, failed.get_job_ids()


def assert_all_complete_once(base_url, user, session_ids, timeout) -> list[dict]:
    sessions = [wait_for_session(base_url, user, sid, timeout=timeout) for sid in session_ids]
    for s in sessions:
        replies = [i for i in s["interactions"] if i["creator"] == "system"]
        assert len(replies) == 1, s
        assert replies[0]["state"] == "complete" and replies[0]["message"], replies[0]
    return sessions


def test_one_runner_keeps_256_jobs_in_flight_and_leaves_registries_clean(
        live_server, services, wide_runner, live_user):
    started, failed = registries(services["redis_url"], WIDE_MODEL)
    server = vllm_server(wide_runner)
    freeze(server)  # every job stays in flight until all 256 have started
    try:
        ids = create_sessions(live_server, live_user, WIDE_MODEL, 256)
        wait_started(started, 256, timeout=60)
        holders = {runner_of_worker(job.worker_name) for job in
                   (started.get_queue().fetch_job(i) for i in started.get_job_ids()) if job}
        assert holders == {"runner-wide"}
    finally:
        thaw(server)
    assert_all_complete_once(live_server, live_user, ids, timeout=180)
    assert_registries_drain(started, failed)


def test_a_runner_killed_holding_64_jobs_loses_none(live_server, services, runner_token, models_dir,
                                                      live_user, tmp_path):
    model = "helix/tiny-chat-kill64"
    started, failed = registries(services["redis_url"], model)
    victim = start_runner(live_server, services, runner_token, models_dir, tmp_path, runner_id="runner-k1",
                          text_model=model, extra_env={"HELIX_TEXT_WORKERS": "64", **FULL_LENGTH})
    heir = None
    try:
        victim.wait_for_log("ready:", timeout=300)
        server = vllm_server(victim)
        freeze(server)
        ids = create_sessions(live_server, live_user, model, 64)
        wait_started(started, 64, timeout=60)
        victim.proc.send_signal(signal.SIGKILL)  # its workers and vLLM die with it
        thaw(server)
        # What it held when it died (a dead worker's jobs stay "started" until the reconciler
        # takes them back): each of those runs again, as attempt 2.
        jobs = [job for job in (started.get_queue().fetch_job(i) for i in started.get_job_ids()) if job]
        held = {job.id for job in jobs if job.worker_name and runner_of_worker(job.worker_name) == "runner-k1"}
        # A job listed as started with no worker was queued anew by a reconciler pass in between: it
        # may or may not have run on the victim first.
        unknown = {job.id for job in jobs if not job.worker_name}
        assert len(held) + len(unknown) >= 60, f"the runner held only {len(held)} of 64 jobs when it was killed"
        heir = start_runner(live_server, services, runner_token, models_dir, tmp_path, runner_id="runner-k2",
                            text_model=model, extra_env={"HELIX_TEXT_WORKERS": "64", **FULL_LENGTH})
        sessions = assert_all_complete_once(live_server, live_user, ids, timeout=300)
        for s in sessions:
            reply = s["interactions"][-1]
            # A job its worker had taken from the queue but not yet started is not a lost attempt.
            expected = {2} if job_id_for(reply["id"]) in held else {1, 2} if job_id_for(reply["id"]) in unknown else {1}
            assert reply["runner"] == "runner-k2" and int(reply["metadata"].get("attempts", 1)) in expected, reply
        assert_registries_drain(started, failed)
    finally:
        victim.stop()
        if heir is not None:
            heir.stop()


async def _watch(http: aiohttp.ClientSession, url: str, headers: dict, opened: asyncio.Event,
                 counter: list[int], total: int) -> dict | None:
    """Reads one events stream to its end; returns the final interaction it saw."""
    final, name = None, None
    async with http.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                if name == "session":
                    counter[0] += 1
                    if counter[0] == total:
                        opened.set()
                elif name == "interaction" and data["finished"]:
                    final = data
                elif name == "end":
                    return final
    return final


def test_500_live_event_streams_all_receive_their_final_event(live_server, wide_runner, live_user):
    server = vllm_server(wide_runner)
    freeze(server)  # the replies wait until every stream is open
    thawed = False
    try:
        ids = create_sessions(live_server, live_user, WIDE_MODEL, 100)
        urls = [f"{live_server}/api/v1/sessions/{sid}/events" for sid in ids for _ in range(5)]

        async def watch_all() -> list:
            nonlocal thawed
            opened, counter = asyncio.Event(), [0]
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=240)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                tasks = [asyncio.create_task(_watch(http, url, live_user.headers, opened, counter, len(urls)))
                         for url in urls]
                await asyncio.wait_for(opened.wait(), 120)  # all 500 open, none finished
                thaw(server)
                thawed = True
                return await asyncio.gather(*tasks)

        finals = asyncio.run(watch_all())
    finally:
        if not thawed:
            thaw(server)
    assert len(finals) == 500
    assert all(f is not None and f["state"] == "complete" and f["message"] for f in finals), \
        [f for f in finals if not f or f["state"] != "complete"][:3]


def test_a_client_connecting_mid_reply_gets_the_whole_text_exactly_once(live_server, services, wide_runner,
                                                                       live_user):
    r = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers, timeout=30,
                      data={"input": "a long one", "mode": "inference", "type": "text",
                            "model_name": WIDE_MODEL, "max_tokens": "1500"})
    sid, reply_id = r.json()["id"], r.json()["interactions"][-1]["id"]
    redis, server = Redis.from_url(services["redis_url"]), vllm_server(wide_runner)
    deadline = time.monotonic() + 60
    while not redis.exists(partial_text_key(reply_id)):  # the first tokens are out
        assert time.monotonic() < deadline, "no text streamed"
        time.sleep(0.01)
    freeze(server)  # mid-reply, for as long as it takes to connect
    text, deltas, snapshot, final = "", 0, None, None
    try:
        for name, data in read_events(live_server, live_user, sid):
            if name == "session":
                snapshot = data["interactions"][-1]
                text = snapshot["message"]
                thaw(server)
            elif name == "delta":
                text += data["delta"]
                deltas += 1
            elif name == "interaction" and data["finished"]:
                final = data
                break
            elif name == "interaction":
                text = data["message"]  # a stored copy of the text so far replaces it
    finally:
        thaw(server)
    assert not snapshot["finished"] and snapshot["message"], snapshot
    assert deltas > 0, "nothing arrived after the snapshot"
    assert text == final["message"], (len(text), len(final["message"]))
