"""Image sessions end to end: gunicorn control plane, a real runner with the tiny diffusers pipeline."""
from __future__ import annotations

import io
import json
import subprocess
import threading

import requests
from PIL import Image

from tests.conftest import read_events, wait_for_session


def png(live_server, live_user, path) -> Image.Image:
    r = requests.get(f"{live_server}/api/v1/filestore/viewer/{path}", headers=live_user.headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/png"
    return Image.open(io.BytesIO(r.content))


def image_session(live_server, live_user, **form) -> dict:
    r = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                      data={"mode": "inference", "type": "image", **form})
    assert r.status_code == 201, r.text
    return wait_for_session(live_server, live_user, r.json()["id"])


def test_reference_image_line_makes_a_png_only_its_owner_can_read(live_server, runner, make_live_user):
    alice, bob = make_live_user(), make_live_user()
    out = subprocess.run(
        ["curl", "-s", f"{live_server}/api/v1/sessions", "-H", f"Authorization: Bearer {alice.key}",
         "-d", "input=flying fish&mode=inference&type=image"],
        check=True, capture_output=True, text=True).stdout
    created = json.loads(out)
    assert created["type"] == "image" and created["model_name"] == "helix/tiny-sd"
    done = wait_for_session(live_server, alice, created["id"])
    reply = done["interactions"][-1]
    assert reply["state"] == "complete" and reply["finished"] and reply["progress"] == 100
    assert len(reply["files"]) == 1 and reply["files"][0].endswith(".png")
    image = png(live_server, alice, reply["files"][0])
    assert image.size == (64, 64)  # the tiny pipeline's native size
    r = requests.get(f"{live_server}/api/v1/filestore/viewer/{reply['files'][0]}", headers=bob.headers)
    assert r.status_code == 404
    listed = requests.get(f"{live_server}/api/v1/filestore/list?path=sessions/{created['id']}/outputs",
                          headers=alice.headers).json()
    assert listed and listed[0]["directory"]


def test_requested_size_and_count(live_server, runner, live_user):
    reply = image_session(live_server, live_user, input="two boats", width="96", height="64",
                          num_images="2", steps="3")["interactions"][-1]
    assert reply["state"] == "complete", reply
    assert [png(live_server, live_user, f).size for f in reply["files"]] == [(96, 64), (96, 64)]


def test_same_seed_same_image_other_seed_other_image(live_server, runner, live_user):
    def pixels(seed):
        reply = image_session(live_server, live_user, input="a red cube", seed=str(seed), steps="3")["interactions"][-1]
        return png(live_server, live_user, reply["files"][0]).tobytes()

    first, again, other = pixels(1234), pixels(1234), pixels(99)
    assert first == again
    assert first != other


def test_progress_streams_per_step_up_to_100(live_server, runner, live_user):
    r = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                      data={"mode": "inference", "type": "image", "input": "slow lighthouse",
                            "steps": "60", "width": "128", "height": "128"})
    sid = r.json()["id"]
    updates = []
    for name, data in read_events(live_server, live_user, sid):
        if name == "interaction":
            updates.append(data)
        elif name == "session" and updates:
            # A stream that read the finish from the store before its event arrived ends with
            # the session as stored (controlplane/sessions/events.py): that is its last word on progress.
            updates.append(data["interactions"][-1])
    progress = [d["progress"] for d in updates]
    statuses = [d["status"] for d in updates]
    assert progress[-1] == 100
    assert progress == sorted(progress)  # never goes backwards
    assert any(0 < p < 100 for p in progress), progress
    assert any(s.startswith("step ") for s in statuses)


def test_chat_and_image_at_once_on_one_runner_without_reloading(live_server, runner, live_user):
    results = {}

    def go(kind, text):
        results[kind] = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                                      data={"mode": "inference", "type": kind, "input": text}).json()["id"]

    threads = [threading.Thread(target=go, args=a) for a in (("text", "hello"), ("image", "a cat"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = wait_for_session(live_server, live_user, results["text"])["interactions"][-1]
    image = wait_for_session(live_server, live_user, results["image"])["interactions"][-1]
    assert text["state"] == "complete" and text["message"]
    assert image["state"] == "complete" and image["files"]
    # Every image job in this run was served by the pipeline loaded once at start-up.
    assert image["metadata"]["pipeline_loads"] == "1"
    assert runner.log().count("image pipeline helix/tiny-sd loaded") == 1


# Deleting a running image job: tests/test_image_budget.py (it stops within a second, mid-step).
