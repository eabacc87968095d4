"""Creating an image fine-tune, and every way a request for one can be wrong: each bad image is a
400 that names the file, and a refused request leaves no session and no file behind. Also: a
later image prompt's own settings (seed included) reach its job."""
from __future__ import annotations

import io

import pytest
from PIL import Image
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from shared.jobs import job_id_for, queue_name


def picture(size=(256, 256), fmt="PNG", color=(200, 40, 40), **save) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt, **save)
    return out.getvalue()


def sideways_jpeg() -> bytes:
    """A 400x300 photo stored as the camera held it: orientation 6, displayed 300 wide, 400 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return picture((400, 300), "JPEG", exif=exif)


def _post(client, user, files=(), **fields):
    data = {"mode": "finetune", "type": "image", **fields}
    data["files"] = [(io.BytesIO(content), name) for name, content in files]
    return client.post("/api/v1/sessions", headers=user.headers, data=data, content_type="multipart/form-data")


def _job(config, interaction_id: str, stage: str = "") -> Job:
    return Job.fetch(job_id_for(interaction_id, stage), connection=Redis.from_url(config.redis_url),
                     serializer=JSONSerializer)


def _nothing_stored(client, user):
    assert client.get("/api/v1/sessions", headers=user.headers).json["total_count"] == 0
    listing = client.get("/api/v1/filestore/list", headers=user.headers)
    assert listing.status_code in (200, 404) and not (listing.json if listing.status_code == 200 else [])


def test_an_image_fine_tune_is_created_at_once_with_captions_and_its_training_queued(client, user, config):
    r = _post(client, user, files=[("cat.png", picture()), ("dog.webp", picture(fmt="WEBP")),
                                   ("camera.jpg", sideways_jpeg())],
              **{"cat.png": "  a photo of  my cat ", "camera.jpg": ""}, training_steps="30", lora_rank="8",
              learning_rate="0.0005", input="my pets")
    assert r.status_code == 201, r.json
    s = r.json
    assert (s["mode"], s["type"], s["model_name"]) == ("finetune", "image", config.image_models[0])
    user_turn, system_turn = s["interactions"]
    assert [p.rsplit("/", 1)[1] for p in user_turn["files"]] == ["cat.png", "dog.webp", "camera.jpg"]
    assert all(p.startswith(f"sessions/{s['id']}/images/") for p in user_turn["files"])
    # Captions as given (spaces tidied); without one, the trigger word.
    assert user_turn["captions"] == {"cat.png": "a photo of my cat", "dog.webp": "hlx", "camera.jpg": "hlx"}
    assert user_turn["sizes"]["camera.jpg"] == [300, 400]  # as displayed: EXIF rotation applied
    assert system_turn["state"] == "waiting" and system_turn["data_prep_stage"] == "finetune"
    assert s["config"]["finetune"] == {"hyperparameters": {"training_steps": 30, "learning_rate": 0.0005, "lora_rank": 8},
                                       "trigger_word": "hlx"}
    # The images are the caller's files, as sent.
    got = client.get(f"/api/v1/filestore/viewer/{user_turn['files'][2]}", headers=user.headers)
    assert got.status_code == 200 and got.data == sideways_jpeg()
    job = _job(config, system_turn["id"], "finetune")
    assert job.origin == queue_name("image-finetune", config.image_models[0])
    assert job.func_name == "runner.training.image_job.train_image"
    payload = job.args[0]
    assert payload["images"] == [{"path": p, "caption": c} for p, c in
                                 zip(user_turn["files"], ["a photo of my cat", "hlx", "hlx"])]
    assert payload["hyperparameters"] == {"training_steps": 30, "learning_rate": 0.0005, "lora_rank": 8}
    # Still training: a prompt now is a conflict, not a generation.
    r = client.put(f"/api/v1/sessions/{s['id']}", headers=user.headers, data={"input": "my cat"})
    assert r.status_code == 409


def test_a_trigger_word_of_ones_own(client, user):
    r = _post(client, user, files=[("a.png", picture())], trigger_word="zxq_style")
    assert r.status_code == 201, r.json
    assert r.json["interactions"][0]["captions"] == {"a.png": "zxq_style"}


def _truncated() -> bytes:
    """A noisy PNG (so its data is long) cut in half, as an interrupted upload leaves it."""
    out = io.BytesIO()
    Image.effect_noise((300, 300), 64).convert("RGB").save(out, format="PNG")
    return out.getvalue()[: len(out.getvalue()) // 2]


@pytest.mark.parametrize("files,fields,message", [
    ([], {}, "needs images"),
    ([("notes.txt", b"just some words, not a picture")], {}, "file 'notes.txt' is not an image"),
    ([("ok.png", picture()), ("cut.png", _truncated())], {}, "file 'cut.png' is truncated or damaged"),
    ([("ok.png", picture()), ("icon.png", picture((64, 300)))], {}, "file 'icon.png' is 64x300 pixels, too small"),
    ([("anim.gif", picture(fmt="GIF"))], {}, "file 'anim.gif' is a GIF image"),
    ([("a.png", picture()), ("a.png", picture())], {}, "two files are named 'a.png'"),
    ([("a.png", picture())], {"a.png": "x" * 1001}, "'a.png' is 1001 characters"),
    ([("a.png", picture())], {"training_steps": "0"}, "'training_steps' must be between 1 and 10000"),
    ([("a.png", picture())], {"learning_rate": "1"}, "'learning_rate' must be between"),
    ([("a.png", picture())], {"lora_rank": "256"}, "'lora_rank' must be between 1 and 128"),
    ([("a.png", picture())], {"steps": "30"}, "'training_steps'"),
    ([("a.png", picture())], {"trigger_word": "two words"}, "'trigger_word'"),
    ([("a.png", picture())], {"model_name": "no-such-model"}, "unknown image model"),
])
def test_bad_image_fine_tunes_are_refused_by_name_and_store_nothing(client, user, files, fields, message):
    r = _post(client, user, files=files, **fields)
    assert r.status_code == 400, r.json
    assert message in r.json["error"], r.json
    _nothing_stored(client, user)


def test_more_images_than_the_maximum_are_refused_naming_the_first_one_over(client, user, config, monkeypatch):
    monkeypatch.setattr(config, "max_finetune_images", 2)
    r = _post(client, user, files=[(f"{n}.png", picture()) for n in range(3)])
    assert r.status_code == 400 and "file '2.png' is image 3: at most 2 images" in r.json["error"], r.json
    _nothing_stored(client, user)


def test_too_small_is_a_setting(client, user, config, monkeypatch):
    monkeypatch.setattr(config, "min_finetune_image_px", 64)
    assert _post(client, user, files=[("small.png", picture((64, 80)))]).status_code == 201


def test_a_later_image_prompt_carries_its_own_settings(client, user, config, db):
    r = client.post("/api/v1/sessions", headers=user.headers,
                    data={"mode": "inference", "type": "image", "input": "a cat", "width": "128", "seed": "1"})
    assert r.status_code == 201, r.json
    sid = r.json["id"]
    db.execute("UPDATE interactions SET state = 'complete', finished = true WHERE session_id = %s", (sid,))
    bad = client.put(f"/api/v1/sessions/{sid}", headers=user.headers, data={"input": "a dog", "seed": "x"})
    assert bad.status_code == 400 and "'seed'" in bad.json["error"]
    r = client.put(f"/api/v1/sessions/{sid}", headers=user.headers,
                   data={"input": "a dog", "seed": "77", "steps": "3"})
    assert r.status_code == 200, r.json
    payload = _job(config, r.json["interactions"][-1]["id"]).args[0]
    # This prompt's seed and steps; the session's width where the prompt named none.
    assert (payload["prompt"], payload["seed"], payload["steps"], payload["width"]) == ("a dog", 77, 3, 128)


def test_an_image_fine_tune_clones_with_its_images_and_captions(client, user, config, make_user):
    s = _post(client, user, files=[("cat.png", picture())], **{"cat.png": "my cat"}).json
    sid, iid = s["id"], s["interactions"][1]["id"]
    base = f"/api/v1/sessions/{sid}/finetune/clone/{iid}"
    r = client.post(f"{base}/with_questions", headers=user.headers)
    assert r.status_code == 400 and "no questions" in r.json["error"]
    assert client.post(f"{base}/all", headers=user.headers).status_code == 409  # not trained yet
    assert client.post(f"{base}/just_data", headers=make_user().headers).status_code == 404
    r = client.post(f"{base}/just_data", headers=user.headers)
    assert r.status_code == 201, r.json
    clone = r.json
    user_turn, system_turn = clone["interactions"]
    assert user_turn["files"] == [f"sessions/{clone['id']}/images/cat.png"]
    assert user_turn["captions"] == {"cat.png": "my cat"}
    assert system_turn["data_prep_stage"] == "finetune" and system_turn["state"] == "waiting"
    payload = _job(config, system_turn["id"], "finetune").args[0]
    assert payload["images"] == [{"path": user_turn["files"][0], "caption": "my cat"}]
