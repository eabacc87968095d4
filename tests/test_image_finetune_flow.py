"""Image fine-tunes end to end through the API, on image-only runners with the tiny pipeline:
captioned images in, a loss history and samples out, the session generating with its adapter on
the warm pipeline while another user's session on the same pipeline is untouched; and a runner
killed mid-training whose run resumes from its checkpoint on another runner."""
from __future__ import annotations

import io
import signal

import pytest
import requests
from PIL import Image

from conftest import start_runner, wait_for_session


def striped(top, bottom, size=(256, 320)) -> bytes:
    w, h = size
    image = Image.new("RGB", (w, h), bottom)
    image.paste(Image.new("RGB", (w, h // 2), top), (0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


IMAGES = {"red-blue.png": striped((220, 30, 30), (30, 30, 220)),
          "green-black.png": striped((30, 200, 30), (10, 10, 10))}


def _system(session: dict) -> dict:
    return [i for i in session["interactions"] if i["creator"] == "system"][-1]


def _create(live_server, user, model: str, **fields) -> dict:
    r = requests.post(f"{live_server}/api/v1/sessions", headers=user.headers,
                      data={"mode": "finetune", "type": "image", "model_name": model,
                            "red-blue.png": "a red and blue flag", "learning_rate": "0.01", **fields},
                      files=[("files", (name, data)) for name, data in IMAGES.items()])
    assert r.status_code == 201, r.text
    return r.json()


def _pixels(live_server, user, path: str) -> bytes:
    r = requests.get(f"{live_server}/api/v1/filestore/viewer/{path}", headers=user.headers, timeout=10)
    assert r.status_code == 200, r.text
    return Image.open(io.BytesIO(r.content)).tobytes()


@pytest.fixture(scope="module")
def image_runner(live_server, services, runner_token, models_dir, tmp_path_factory):
    """A runner with only the tiny image pipeline (no vLLM), under a model name of its own."""
    proc = start_runner(live_server, services, runner_token, models_dir, tmp_path_factory.mktemp("img-runner"),
                        runner_id="image-ft", text_model="", image_model="helix/tiny-sd-lora")
    proc.wait_for_log("ready:", timeout=300)
    yield proc
    proc.stop()


@pytest.mark.timeout(600)
def test_train_on_captioned_images_then_generate_with_the_adapter(live_server, image_runner, make_live_user):
    alice, bob = make_live_user(), make_live_user()
    model = "helix/tiny-sd-lora"
    s = _create(live_server, alice, model, training_steps="40")
    sid = s["id"]
    s = wait_for_session(live_server, alice, sid, timeout=300, until=lambda x: _system(x)["finished"])
    system = _system(s)
    assert system["state"] == "complete" and system["data_prep_stage"] == "complete", system
    assert s["mode"] == "inference" and s["lora_dir"] == system["lora_dir"]
    assert s["lora_dir"].startswith(f"sessions/{sid}/outputs/{system['id']}")
    history = system["training_history"]
    assert [p["step"] for p in history if "loss" in p] == list(range(1, 41))
    fixed = [p["fixed_noise_loss"] for p in history if "fixed_noise_loss" in p]
    assert len(fixed) >= 2 and fixed[-1] < fixed[0], fixed
    assert system["training_run"]["train_rows"] == 2
    # Samples from the captions (the uncaptioned image's is the trigger word), attached as files.
    samples = system["samples"]
    assert [x["caption"] for x in samples] == ["a red and blue flag", "hlx"]
    assert system["files"] == [x["file"] for x in samples]
    assert all(Image.open(io.BytesIO(requests.get(f"{live_server}/api/v1/filestore/viewer/{f}",
                                                  headers=alice.headers).content)).size == (64, 64)
               for f in system["files"])
    assert requests.get(f"{live_server}/api/v1/filestore/viewer/{system['files'][0]}",
                        headers=bob.headers).status_code == 404

    def generate(user, session_id=None) -> dict:
        form = {"input": "a red and blue flag", "seed": "11", "steps": "3"}
        if session_id:
            r = requests.put(f"{live_server}/api/v1/sessions/{session_id}", headers=user.headers, data=form)
            assert r.status_code == 200, r.text
        else:
            r = requests.post(f"{live_server}/api/v1/sessions", headers=user.headers,
                              data={**form, "mode": "inference", "type": "image", "model_name": model})
            assert r.status_code == 201, r.text
            session_id = r.json()["id"]
        reply = wait_for_session(live_server, user, session_id, timeout=60)["interactions"][-1]
        assert reply["state"] == "complete", reply
        return reply

    base = generate(bob)
    tuned = generate(alice, sid)
    again = generate(alice, sid)
    after = generate(bob)
    assert tuned["metadata"]["adapter"].startswith("lora-") and "adapter" not in base["metadata"]
    assert _pixels(live_server, alice, tuned["files"][0]) != _pixels(live_server, bob, base["files"][0])
    assert _pixels(live_server, alice, again["files"][0]) == _pixels(live_server, alice, tuned["files"][0])
    # Bob's image after Alice's adapter was used is the one he had before.
    assert _pixels(live_server, bob, after["files"][0]) == _pixels(live_server, bob, base["files"][0])
    # A clone with everything carries the adapter: the same picture from the same prompt and seed.
    r = requests.post(f"{live_server}/api/v1/sessions/{sid}/finetune/clone/{system['id']}/all", headers=alice.headers)
    assert r.status_code == 201, r.text
    cloned = generate(alice, r.json()["id"])
    assert cloned["metadata"]["adapter"] != tuned["metadata"]["adapter"]
    assert _pixels(live_server, alice, cloned["files"][0]) == _pixels(live_server, alice, tuned["files"][0])
    # One pipeline load for the worker's life, whatever adapters came and went.
    assert cloned["metadata"]["pipeline_loads"] == "1"
    assert image_runner.log().count("image pipeline helix/tiny-sd-lora loaded") == 1


@pytest.mark.timeout(900)
def test_a_runner_killed_during_image_training_resumes_from_its_checkpoint(live_server, services, runner_token,
                                                                           models_dir, make_live_user, tmp_path):
    user = make_live_user()
    model = "helix/tiny-sd-resume"
    runners = {rid: start_runner(live_server, services, runner_token, models_dir, tmp_path, runner_id=rid,
                                 text_model="", image_model=model)
               for rid in ("img-trainer-a", "img-trainer-b")}
    try:
        for proc in runners.values():
            proc.wait_for_log("ready:", timeout=300)
        s = _create(live_server, user, model, training_steps="100")
        sid = s["id"]
        s = wait_for_session(live_server, user, sid, timeout=300,
                             until=lambda x: "checkpoint" in _system(x) or _system(x)["finished"])
        system = _system(s)
        assert not system["finished"], "training ended before its first checkpoint: make the run longer"
        victim, checkpoint_step = system["runner"], system["checkpoint"]["step"]
        runners[victim].proc.send_signal(signal.SIGKILL)
        s = wait_for_session(live_server, user, sid, timeout=600, until=lambda x: _system(x)["finished"])
        system = _system(s)
        assert system["state"] == "complete", system
        assert system["runner"] != victim
        assert system["training_run"]["start_step"] >= checkpoint_step > 0
        steps = [p["step"] for p in system["training_history"] if "loss" in p]
        assert steps[-1] == 100 and system["training"]["steps"] == 100
        assert steps == sorted(set(steps)), "a step is in the history twice"  # the killed run's are replaced
        assert s["mode"] == "inference" and s["lora_dir"]
    finally:
        for proc in runners.values():
            proc.stop()
