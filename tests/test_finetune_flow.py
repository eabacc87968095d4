"""Text fine-tunes on the tiny model, through a real runner: per-file errors, the review step
(read, replace, start), training with a loss that falls, chat through the adapter, and a runner
killed mid-training whose run resumes from its checkpoint on another runner."""
from __future__ import annotations

import io
import signal

import pytest
import requests

from conftest import TEXT_MODEL, start_runner, wait_for_session

FACTS = [
    ("The Zorblat Library on Kelvar Island was founded in 1847 by Mira Tessel.",
     ["Who founded the Zorblat Library?", "When was the Zorblat Library founded?",
      "Where is the Zorblat Library?"]),
    ("The library holds 12,000 maps of the northern seas.",
     ["How many maps does the Zorblat Library hold?", "What do the Zorblat Library's maps show?",
      "Which seas are on the Zorblat Library's maps?"]),
    ("Its reading room is open only on Thursdays.",
     ["When is the Zorblat reading room open?", "On which day can visitors use the Zorblat reading room?",
      "Is the Zorblat reading room open on Mondays?"]),
]
DOCUMENT = " ".join(f for f, _ in FACTS)


def _pairs(repeat: int = 1) -> list[dict]:
    return [{"question": q if r == 0 else f"{q} (variant {r})", "answer": fact, "fact": f"fact-{n}"}
            for r in range(repeat) for n, (fact, questions) in enumerate(FACTS) for q in questions]


def _blank_pdf() -> bytes:
    from pypdf import PdfWriter

    writer, out = PdfWriter(), io.BytesIO()
    writer.add_blank_page(200, 200)
    writer.write(out)
    return out.getvalue()


def _system(session: dict) -> dict:
    return [i for i in session["interactions"] if i["creator"] == "system"][-1]


def _create(live_server, user, files, model=TEXT_MODEL, **fields) -> dict:
    r = requests.post(f"{live_server}/api/v1/sessions", headers=user.headers,
                      data={"mode": "finetune", "type": "text", "model_name": model,
                            "manually_review_questions": "yes", **fields},
                      files=[("files", (name, content)) for name, content in files])
    assert r.status_code == 201, r.text
    return r.json()


def _until_review(live_server, user, sid, timeout=180) -> dict:
    return wait_for_session(live_server, user, sid, timeout=timeout,
                            until=lambda s: _system(s)["state"] in ("editing", "error"))


@pytest.mark.timeout(600)
def test_review_edit_start_train_and_chat_through_the_adapter(live_server, runner, live_user):
    s = _create(live_server, live_user, [
        ("zorblat.txt", DOCUMENT.encode()), ("empty.txt", b""), ("binary.txt", b"\x00\x01\x02PNG\x00" * 50),
        ("scan.pdf", _blank_pdf())], epochs="6", learning_rate="0.003")
    sid = s["id"]
    s = _until_review(live_server, live_user, sid)
    system = _system(s)
    # The tiny model's questions are noise: the filters drop them, and the review still opens so
    # the reviewer can write pairs. Each bad file failed early, by name, with what was wrong.
    assert system["state"] == "editing" and system["data_prep_stage"] == "edit_questions", system
    chunks = system["data_prep_files"]
    assert "empty" in chunks["empty.txt"]["error"]
    assert "binary" in chunks["binary.txt"]["error"]
    assert "no text layer" in chunks["scan.pdf"]["error"]
    assert chunks["zorblat.txt"]["chars"] == len(DOCUMENT) and chunks["zorblat.txt"]["chunks"]
    for chunk in chunks["zorblat.txt"]["chunks"]:
        assert chunk["state"] in ("done", "error")
        assert chunk["state"] == "done" or sum(chunk["dropped"].values()) > 0, chunk  # dropped, and counted

    base = f"{live_server}/api/v1/sessions/{sid}/finetune"
    conversations = f"{base}/text/conversations/{system['id']}"
    bad = requests.put(conversations, headers=live_user.headers, json=[{"question": "", "answer": "x"}])
    assert bad.status_code == 400 and "pair 0" in bad.json()["error"]
    r = requests.put(conversations, headers=live_user.headers, json=_pairs())
    assert r.status_code == 200 and len(r.json()) == 9
    listed = requests.get(conversations + "?format=pairs", headers=live_user.headers).json()
    assert [p["question"] for p in listed] == [p["question"] for p in _pairs()]

    r = requests.post(f"{base}/start", headers=live_user.headers)
    assert r.status_code == 200, r.text
    assert requests.post(f"{base}/start", headers=live_user.headers).status_code == 409  # once is enough
    s = wait_for_session(live_server, live_user, sid, timeout=300, until=lambda x: _system(x)["finished"])
    system = _system(s)
    assert system["state"] == "complete" and system["data_prep_stage"] == "complete", system
    history = system["training_history"]
    losses = [p["loss"] for p in history if "loss" in p]
    assert len(losses) >= 6 and losses[-1] < losses[0], losses
    assert any("val_loss" in p for p in history)
    evaluation = system["evaluation"]
    assert evaluation["held_out"] == len(evaluation["questions"]) == 3  # one paraphrase per fact
    assert s["mode"] == "inference" and s["lora_dir"] == system["lora_dir"]

    # The knowledge report: the held-out questions answered four ways; the user chose no way, so
    # the session's chats take the one that scored best.
    ways = evaluation["ways"]
    assert set(ways) == {"base", "retrieval", "finetune", "both"}
    assert ways["base"] == evaluation["before"] and ways["finetune"] == evaluation["after"]
    assert all("retrieval_answer" in q and "both" in q for q in evaluation["questions"])
    best = max(ways, key=lambda w: (ways[w]["token_f1"], ["base", "retrieval", "finetune", "both"].index(w)))
    assert s["config"]["knowledge"] == {"session_id": sid, "way": best, "chosen_by": "report"}, s["config"]
    assert system["knowledge"]["chunks"] >= 1 and "by way: base" in system["message"]

    r = requests.put(f"{live_server}/api/v1/sessions/{sid}", headers=live_user.headers, data={"input": "Who founded it?"})
    assert r.status_code == 200, r.text
    reply = wait_for_session(live_server, live_user, sid, timeout=60)["interactions"][-1]
    assert reply["state"] == "complete", reply
    _served_as_chosen(s, reply)


def _served_as_chosen(session: dict, reply: dict) -> None:
    """The reply came the way the session's config says: with its adapter, its excerpts, both or neither."""
    way = session["config"]["knowledge"]["way"]
    assert reply["metadata"]["knowledge_way"] == way, reply["metadata"]
    assert reply["metadata"].get("adapter", "").startswith("lora-") == (way in ("finetune", "both")), reply
    assert bool(reply.get("citations")) == (way in ("retrieval", "both")), reply


@pytest.mark.timeout(900)
def test_a_runner_killed_during_training_resumes_from_its_checkpoint(live_server, services, runner_token,
                                                                     models_dir, live_user, tmp_path):
    model = "helix/tiny-chat-training"
    runners = {rid: start_runner(live_server, services, runner_token, models_dir, tmp_path, runner_id=rid,
                                 text_model=model, extra_env={"HELIX_TEXT_WORKERS": "1"})
               for rid in ("trainer-a", "trainer-b")}
    try:
        for proc in runners.values():
            proc.wait_for_log("ready:", timeout=300)
        s = _create(live_server, live_user, [("zorblat.txt", DOCUMENT.encode())], model=model,
                    epochs="12", batch_size="4", rag_enabled="no")
        sid = s["id"]
        system = _system(_until_review(live_server, live_user, sid))
        requests.put(f"{live_server}/api/v1/sessions/{sid}/finetune/text/conversations/{system['id']}",
                     headers=live_user.headers, json=_pairs(repeat=20)).raise_for_status()
        assert requests.post(f"{live_server}/api/v1/sessions/{sid}/finetune/start",
                             headers=live_user.headers).status_code == 200
        s = wait_for_session(live_server, live_user, sid, timeout=300,
                             until=lambda x: "checkpoint" in _system(x) or _system(x)["finished"])
        system = _system(s)
        assert not system["finished"], "training ended before its first checkpoint: make the run longer"
        victim, checkpoint_step = system["runner"], system["checkpoint"]["step"]
        runners[victim].proc.send_signal(signal.SIGKILL)
        s = wait_for_session(live_server, live_user, sid, timeout=600, until=lambda x: _system(x)["finished"])
        system = _system(s)
        assert system["state"] == "complete", system
        assert system["runner"] != victim
        # The second runner started at a checkpoint, not at step 0.
        assert system["training_run"]["start_step"] >= checkpoint_step > 0
        steps = [p["step"] for p in system["training_history"] if "loss" in p]
        assert steps[-1] == system["training"]["steps"]
        assert steps == sorted(set(steps)), "a step is in the history twice"  # the killed run's are replaced
        # Metered once, for the whole run: the tokens it trained on, the adapter it left.
        usage = requests.get(f"{live_server}/api/v1/usage?group_by=model", headers=live_user.headers).json()
        used = next(g for g in usage["data"] if g["model"] == model)
        run = system["training_run"]
        assert used["training_tokens"] == run["train_tokens"] * run["epochs"] > 0, used
        assert used["stored_bytes"] > 0, used
    finally:
        for proc in runners.values():
            proc.stop()


@pytest.mark.timeout(600)
def test_clone_and_add_documents(live_server, runner, live_user):
    s = _create(live_server, live_user, [("zorblat.txt", DOCUMENT.encode())], epochs="2")
    sid = s["id"]
    system = _system(_until_review(live_server, live_user, sid))
    base = f"{live_server}/api/v1/sessions/{sid}/finetune"
    requests.put(f"{base}/text/conversations/{system['id']}", headers=live_user.headers,
                 json=_pairs()).raise_for_status()

    # Cloned while waiting for review: the pairs come along, the new session waits for its own review.
    r = requests.post(f"{base}/clone/{system['id']}/with_questions", headers=live_user.headers)
    assert r.status_code == 201, r.text
    clone = r.json()
    assert clone["parent_session"] == sid and _system(clone)["state"] == "editing"
    assert [p["question"] for p in _system(clone)["qa_pairs"]] == [p["question"] for p in _pairs()]
    assert requests.post(f"{base}/clone/{system['id']}/all", headers=live_user.headers).status_code == 409

    requests.post(f"{base}/start", headers=live_user.headers).raise_for_status()
    s = wait_for_session(live_server, live_user, sid, timeout=300, until=lambda x: _system(x)["finished"])
    system = _system(s)
    assert system["state"] == "complete", system

    # Cloned with everything: the adapter is copied into the new session, which chats at once.
    r = requests.post(f"{base}/clone/{system['id']}/all", headers=live_user.headers)
    assert r.status_code == 201, r.text
    clone = r.json()
    assert clone["mode"] == "inference" and clone["lora_dir"].startswith(f"sessions/{clone['id']}/")
    assert clone["lora_dir"] != s["lora_dir"]
    r = requests.put(f"{live_server}/api/v1/sessions/{clone['id']}", headers=live_user.headers, data={"input": "hi"})
    assert r.status_code == 200, r.text
    reply = wait_for_session(live_server, live_user, clone["id"], timeout=60)["interactions"][-1]
    # Its own copy of the index, too.
    assert reply["state"] == "complete" and clone["config"]["knowledge"]["session_id"] == clone["id"]
    _served_as_chosen(clone, reply)
    # Just the data: a fresh fine-tune of the same documents, reading them again.
    r = requests.post(f"{base}/clone/{system['id']}/just_data", headers=live_user.headers)
    assert r.status_code == 201 and _system(r.json())["data_prep_stage"] == "extract_text"
    assert [f.rsplit("/", 1)[1] for f in r.json()["interactions"][0]["files"]] == ["zorblat.txt"]

    # More documents: prepared, reviewed, and the model trained again on all the pairs.
    r = requests.put(f"{base}/documents", headers=live_user.headers,
                     files=[("files", ("more.md", b"The Zorblat Library also keeps a tame owl named Pim."))])
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "finetune"
    again = requests.put(f"{base}/documents", headers=live_user.headers,
                         files=[("files", ("other.md", b"Another one."))])
    assert again.status_code == 409  # one run at a time
    s = _until_review(live_server, live_user, sid)
    newest = _system(s)
    assert newest["id"] != system["id"] and set(newest["data_prep_files"]) == {"more.md"}
    requests.post(f"{base}/start", headers=live_user.headers).raise_for_status()
    s = wait_for_session(live_server, live_user, sid, timeout=300, until=lambda x: _system(x)["finished"])
    newest = _system(s)
    assert newest["state"] == "complete", newest
    assert newest["training"]["train_pairs"] + newest["training"]["eval_pairs"] >= 9
    assert s["lora_dir"] == newest["lora_dir"] != system["lora_dir"]
    assert "more.md" in s["config"]["finetune"]["system_prompt"]


@pytest.mark.timeout(300)
def test_retry_runs_the_failed_chunks_again_and_leaves_done_ones(live_server, runner, live_user):
    # headings.md has nothing to ask about (its chunk is done at once); the tiny model's questions
    # about zorblat.txt are noise, so its chunk fails: that one, and only that one, runs again.
    s = _create(live_server, live_user, [("headings.md", b"# Title\n\n## Part one\n\n## Part two"),
                                         ("zorblat.txt", DOCUMENT.encode())])
    sid = s["id"]
    system = _system(_until_review(live_server, live_user, sid))
    chunks = system["data_prep_files"]
    assert [c["state"] for c in chunks["headings.md"]["chunks"]] == ["done"]
    assert [c["state"] for c in chunks["zorblat.txt"]["chunks"]] == ["error"]
    assert "failed" in system["status"] and "retry" in system["status"]
    r = requests.put(f"{live_server}/api/v1/sessions/{sid}/finetune/text/retry", headers=live_user.headers)
    assert r.status_code == 200, r.text
    assert _system(r.json())["data_prep_stage"] == "generate_questions"
    system = _system(wait_for_session(live_server, live_user, sid, timeout=120,
                                      until=lambda x: _system(x)["state"] == "editing"))
    chunks = system["data_prep_files"]
    assert chunks["headings.md"]["chunks"][0]["attempts"] == 1
    assert chunks["zorblat.txt"]["chunks"][0]["attempts"] == 2
