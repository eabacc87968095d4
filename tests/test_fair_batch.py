"""Fair share of a runner's batch: while a light user's chat shares the runner with another
user's many, the batch narrows and the other user's replies pause, then go on from their text so
far, to their full length, counting their tokens once (runner/text/fair_batch.py)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import requests

from conftest import REAL_TEXT_MODEL, wait_for_session
from runner.jobs import PAUSED_STATUS
from runner.text.fair_batch import FairBatch, allotments
from shared.jobs import TextInferenceJob


def test_the_batch_narrows_only_while_a_light_user_shares_it():
    assert allotments({"a": 64}, 4) is None  # alone: every stream runs
    assert allotments({"a": 64, "b": 1}, 4) == {"a": 3, "b": 1}
    assert allotments({"a": 64, "b": 1}, 0) is None  # off
    assert allotments({"a": 64, "b": 30}, 4) is None  # two heavy users share the whole batch
    assert allotments({"a": 64, "b": 2, "c": 1}, 4) == {"a": 2, "b": 1, "c": 1}
    # More users than the width: one stream each, never none.
    assert allotments({"a": 3, "b": 1, "c": 1, "d": 1, "e": 1}, 4) == {k: 1 for k in "abcde"}


def test_an_owners_newest_replies_pause_and_run_again_when_the_light_user_leaves():
    batch = FairBatch(2)
    heavy = [batch.join("heavy", pausable=True) for _ in range(3)]
    assert all(t.running.is_set() for t in heavy)
    segment = heavy[2].segment()
    light = batch.join("light", pausable=True)
    assert light.running.is_set() and heavy[0].running.is_set()
    assert not heavy[1].running.is_set() and not heavy[2].running.is_set()
    assert segment.stop.is_set() and heavy[2].pauses == 1  # its stream is told to stop
    batch.leave(light)
    assert all(t.running.is_set() for t in heavy) and batch.running() == 3
    assert heavy[2].segment().stop.is_set() is False


def test_replies_that_cannot_go_on_as_the_same_request_never_pause():
    batch = FairBatch(2)
    seeded = [batch.join("heavy", pausable=False) for _ in range(3)]
    batch.join("light", pausable=True)
    assert all(t.running.is_set() for t in seeded)
    job = TextInferenceJob(session_id="s", interaction_id="i", model="m", messages=[])
    assert job.pausable()
    for sampling in ({"seed": 1}, {"n": 2}, {"response_format": {"type": "json_object"}}, {"presence_penalty": 0.5}):
        assert not TextInferenceJob(session_id="s", interaction_id="i", model="m", messages=[],
                                    sampling=sampling).pausable(), sampling
    assert TextInferenceJob(session_id="s", interaction_id="i", model="m", messages=[], sampling={"n": 1}).pausable()


STORY = "Write a long story about a lighthouse keeper and a storm."
TOKENS = 96
# The busy replies are long enough to be still running when the other user's chats arrive (on a
# loaded machine one of three 96-token replies could end first, and two replies against two
# share the batch without a pause), and the other user's replies long enough that a client
# polling every few tenths of a second reads the paused status.
BUSY_TOKENS, QUICK_TOKENS = 320, 48


def _post(base_url: str, user, text: str, tokens: int) -> str:
    r = requests.post(f"{base_url}/api/v1/sessions", headers=user.headers, timeout=60, data={
        "input": text, "mode": "inference", "type": "text", "model_name": REAL_TEXT_MODEL,
        "temperature": "0", "max_tokens": str(tokens)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _reply(base_url: str, user, session_id: str) -> dict:
    return requests.get(f"{base_url}/api/v1/sessions/{session_id}", headers=user.headers,
                        timeout=60).json()["interactions"][-1]


def test_a_reply_paused_for_another_users_chat_goes_on_from_where_it_stopped(live_server, real_runner,
                                                                          make_live_user):
    heavy, light = make_live_user(), make_live_user()
    alone = wait_for_session(live_server, heavy, _post(live_server, heavy, STORY, TOKENS),
                             timeout=300)["interactions"][-1]
    assert alone["state"] == "complete" and "pauses" not in alone["metadata"], alone
    assert alone["usage"]["completion_tokens"] == TOKENS, alone["usage"]  # no early stop

    # The runner's three workers all on the heavy user's replies; then two chats of another user.
    busy = [_post(live_server, heavy, STORY, BUSY_TOKENS) for _ in range(3)]
    deadline = time.monotonic() + 120
    while not all(_reply(live_server, heavy, sid)["message"] for sid in busy):
        assert time.monotonic() < deadline, "the heavy user's replies did not start"
        time.sleep(0.1)
    with ThreadPoolExecutor(2) as pool:
        quick = list(pool.map(lambda n: _post(live_server, light, f"Name {n} colours and say what each one means.", QUICK_TOKENS), (2, 3)))
    paused_text: dict[str, str] = {}  # a paused reply's text, as a client read it while it waited
    while not all(_reply(live_server, light, sid)["finished"] for sid in quick):
        for sid in busy:
            reply = _reply(live_server, heavy, sid)
            if reply["status"] == PAUSED_STATUS:
                paused_text[sid] = reply["message"]
        assert time.monotonic() < deadline + 120, "the light user's chats did not finish"
        time.sleep(0.05)
    assert paused_text, "no reply said it was paused"

    for sid in quick:
        assert _reply(live_server, light, sid)["state"] == "complete"
    replies = {sid: wait_for_session(live_server, heavy, sid, timeout=300)["interactions"][-1] for sid in busy}
    assert sum(int(r["metadata"].get("pauses", "0")) for r in replies.values()) >= 1
    for sid, reply in replies.items():
        assert reply["state"] == "complete", reply
        # It went on from where it stopped: nothing lost or said twice at the seam.
        assert reply["message"].startswith(paused_text.get(sid, "")), (paused_text.get(sid), reply["message"])
        assert len(reply["message"]) > len(paused_text.get(sid, ""))
        # Its tokens counted once: the prompt as it was first sent (the text so far went back as
        # prompt, not as new tokens), and no more completion tokens than it was allowed.
        usage = reply["usage"]
        assert usage["prompt_tokens"] == alone["usage"]["prompt_tokens"], usage
        assert usage["completion_tokens"] <= BUSY_TOKENS and usage["total_tokens"] == sum(
            usage[k] for k in ("prompt_tokens", "completion_tokens")), usage
        if reply["metadata"]["finish_reason"] == "length":
            assert usage["completion_tokens"] == BUSY_TOKENS, usage
