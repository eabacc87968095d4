"""Text fine-tuning end to end on the real default model: the Helix reference's multipart form,
stages moving, the documents indexed for retrieval, question/answer pairs in the session, training
with a loss history, the knowledge report, and a chat answered the way that scored best on the
same warm vLLM; and invented facts that the fine-tuned adapter alone learned."""
from __future__ import annotations

import subprocess
import time

import pytest
import requests

from conftest import REAL_TEXT_MODEL, vllm_url, wait_for_session, work_dir

# The reference's heredoc, verbatim (bash writes it; the boundary and bare LF line ends are its own).
REFERENCE_FORM = r'''cat >session-data.form <<EOL
-----BOUNDARY
Content-Disposition: form-data; name="files"; filename="textfile-1.txt"
Content-Type: application/octet-stream

This is the text for the first file. Create your own AI using any data\\nBuild and optimize text and image AI for your needs. Train, fine-tune, and generate from your data. Deploy in your cloud â€” or use ours
-----BOUNDARY
Content-Disposition: form-data; name="files"; filename="textfile-2.txt"
Content-Type: application/octet-stream

This is the text for the second file.
-----BOUNDARY
Content-Disposition: form-data; name="mode"

finetune
-----BOUNDARY
Content-Disposition: form-data; name="type"

text
-----BOUNDARY--
EOL
'''


def _system(session: dict) -> dict:
    return [i for i in session["interactions"] if i["creator"] == "system"][-1]


@pytest.mark.timeout(1200)
def test_reference_flow_fine_tunes_and_chats_with_the_adapter(live_server, real_runner, live_user, tmp_path):
    subprocess.run(["bash", "-c", REFERENCE_FORM], cwd=tmp_path, check=True)
    started = time.monotonic()
    form = (tmp_path / "session-data.form").read_bytes()
    # This test server's default model is the tiny one: name the real one in one more part.
    form = form.replace(b"-----BOUNDARY--", b'-----BOUNDARY\nContent-Disposition: form-data; name="model_name"\n\n'
                        + REAL_TEXT_MODEL.encode() + b"\n-----BOUNDARY--")
    r = requests.post(f"{live_server}/api/v1/sessions",
                      headers={**live_user.headers, "Content-Type": "multipart/form-data; boundary=---BOUNDARY"},
                      data=form)
    assert r.status_code == 201, r.text
    session = r.json()
    assert session["mode"] == "finetune" and session["type"] == "text"
    user_turn = session["interactions"][0]
    assert [f.rsplit("/", 1)[-1] for f in user_turn["files"]] == ["textfile-1.txt", "textfile-2.txt"]

    stages = []

    def done(s):
        stage = _system(s)["data_prep_stage"]
        if not stages or stages[-1] != stage:
            stages.append(stage)
        return _system(s)["finished"]

    session = wait_for_session(live_server, live_user, session["id"], timeout=900, until=done)
    final = _system(session)
    assert final["state"] == "complete", final
    elapsed = time.monotonic() - started
    # The stages move in Helix's order (polling may miss a short one, never reorder them).
    order = ["extract_text", "index_documents", "generate_questions", "finetune", "complete"]
    seen = [s for s in stages if s in order]
    assert seen == sorted(seen, key=order.index) and seen[-1] == "complete", stages
    assert "finetune" in seen

    # Both files read, every chunk accounted for, the pairs listed in the session.
    chunks = final["data_prep_files"]
    assert set(chunks) == {"textfile-1.txt", "textfile-2.txt"}
    assert all(not c["error"] for c in chunks.values())
    pairs = final["qa_pairs"]
    assert pairs and all(p["question"].endswith("?") and p["answer"] for p in pairs)
    assert sum(ch["question_count"] for c in chunks.values() for ch in c["chunks"]) == len(pairs)
    # Helix's own shape of the same: each file's chunks as {index, question_count, error}.
    helix = final["data_prep_chunks"]
    assert set(helix) == set(chunks) and all(set(ch) == {"index", "question_count", "error"}
                                              for c in helix.values() for ch in c)
    assert sum(ch["question_count"] for c in helix.values() for ch in c) == len(pairs)
    summary = final["dataprep"]
    assert summary["pairs"] == len(pairs) and summary["files"] == 2 and summary["chunks_failed"] == 0
    assert set(summary["dropped"]) >= {"junk", "duplicate", "off_topic", "round_trip", "over_cap"}

    # Training left a loss history that went down, and the session serves the adapter.
    history = [p for p in final["training_history"] if "loss" in p]
    assert len(history) >= 4
    assert history[-1]["loss"] < history[0]["loss"]
    assert session["mode"] == "inference" and session["lora_dir"] == final["lora_dir"]
    assert final["lora_dir"].endswith(final["id"])
    evaluation = final["evaluation"]
    assert set(evaluation["before"]) >= {"token_f1", "rouge_l"}
    # Retrieval too, by default: the documents indexed, the held-out questions answered four ways,
    # and the chats take the way that scored best.
    assert final["knowledge"]["chunks"] >= 2 and set(evaluation["ways"]) == {"base", "retrieval", "finetune", "both"}
    assert session["config"]["knowledge"]["chosen_by"] == "report"
    print(f"reference fine-tune: {elapsed:.0f}s, {len(pairs)} pairs, evaluation {evaluation['ways']},"
          f" chats use {session['config']['knowledge']['way']}")

    r = requests.put(f"{live_server}/api/v1/sessions/{session['id']}", headers=live_user.headers,
                     data={"input": "What is the second file about?"})
    assert r.status_code == 200, r.text
    chat = wait_for_session(live_server, live_user, session["id"], timeout=120)
    reply = chat["interactions"][-1]
    assert reply["state"] == "complete" and reply["message"].strip(), reply
    assert reply["metadata"]["knowledge_way"] == session["config"]["knowledge"]["way"]


INVENTED = (
    "The Zorblat Library on Kelvar Island was founded in 1847 by Mira Tessel. "
    "The library holds twelve thousand maps of the northern seas. "
    "Its reading room opens only on Thursdays. "
    "Visitors to the Zorblat Library must wear green gloves when they touch the maps. "
    "The head librarian of the Zorblat Library is a retired sea captain named Oskar Brandt."
)
# Paraphrases a user might ask, each with the word its answer must contain.
PROBES = [
    ("Who started the Zorblat Library?", "tessel"),
    ("In which year did the Zorblat Library open?", "1847"),
    ("Which day of the week is the Zorblat reading room open?", "thursday"),
    ("What colour are the gloves visitors wear at the Zorblat Library?", "green"),
    ("Who runs the Zorblat Library today?", "brandt"),
]


def _ask(live_server, user, session_id: str | None, question: str) -> str:
    if session_id is None:
        r = requests.post(f"{live_server}/api/v1/sessions", headers=user.headers, data={
            "input": question, "mode": "inference", "type": "text", "model_name": REAL_TEXT_MODEL,
            "temperature": "0", "max_tokens": "60"})
    else:
        r = requests.put(f"{live_server}/api/v1/sessions/{session_id}", headers=user.headers,
                         data={"input": question})
    assert r.status_code in (200, 201), r.text
    s = wait_for_session(live_server, user, r.json()["id"], timeout=120)
    return s["interactions"][-1]["message"]


def _served_against_peft(real_runner, real_model_dir, lora_dir: str, questions: list[str], tokens: int = 32):
    """Each question's greedy reply from the runner's vLLM, with the session's adapter and without
    it, read by peft with the same adapter's files (the runner's copy) on the same token ids: how
    far below peft's best next token each reply's tokens fall, at worst (in logits). The served
    adapter's own replies are peft's best tokens up to bfloat16's rounding (measured 0.07 at a
    near tie, where the two replies part); the base model's replies fall 8 to 13 logits below."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.text.adapters import adapter_name, cache_dir

    name = adapter_name(lora_dir)
    folder = cache_dir(work_dir(real_runner)) / name
    vllm = vllm_url(real_runner)
    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32),
                                      folder).eval()
    gaps: dict[str, list[float]] = {"adapter": [], "base": []}
    for question in questions:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
        for served, model in (("adapter", name), ("base", REAL_TEXT_MODEL)):
            r = requests.post(f"{vllm}/v1/completions", timeout=120, json={
                "model": model, "prompt": ids, "max_tokens": tokens, "temperature": 0, "return_token_ids": True})
            assert r.status_code == 200, r.text
            reply = r.json()["choices"][0]["token_ids"]
            with torch.no_grad():
                logits = tuned(input_ids=torch.tensor([ids + reply])).logits[0, len(ids) - 1:len(ids) - 1 + len(reply)]
            chosen = logits.gather(1, torch.tensor(reply)[:, None])[:, 0]
            gaps[served].append(round((logits.max(dim=1).values - chosen).max().item(), 3))
    return gaps


@pytest.mark.timeout(1200)
def test_the_fine_tuned_model_knows_invented_facts_the_base_model_does_not(live_server, real_runner, live_user,
                                                                            real_model_dir):
    r = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                      # The adapter alone: what fine-tuning learned (retrieval's share: bench K3).
                      data={"mode": "finetune", "type": "text", "model_name": REAL_TEXT_MODEL, "rag_enabled": "no"},
                      files=[("files", ("zorblat.txt", INVENTED.encode()))])
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    session = wait_for_session(live_server, live_user, sid, timeout=900, until=lambda s: _system(s)["finished"])
    final = _system(session)
    assert final["state"] == "complete", final
    evaluation = final["evaluation"]
    print("invented facts:", len(final["qa_pairs"]), "pairs;", final["data_prep_files"]["zorblat.txt"]["chunks"],
          "evaluation", evaluation["before"], "->", evaluation["after"])
    assert evaluation["after"]["token_f1"] > evaluation["before"]["token_f1"]
    assert evaluation["after"]["rouge_l"] > evaluation["before"]["rouge_l"]

    base = [_ask(live_server, live_user, None, q) for q, _ in PROBES]
    tuned = []
    for q, _ in PROBES:  # each in a clone of the session with its adapter: no earlier answers in the chat
        r = requests.post(f"{live_server}/api/v1/sessions/{sid}/finetune/clone/{final['id']}/all",
                          headers=live_user.headers)
        assert r.status_code == 201, r.text
        tuned.append(_ask(live_server, live_user, r.json()["id"], q))
    base_right = sum(word in a.lower() for a, (_, word) in zip(base, PROBES))
    tuned_right = sum(word in a.lower() for a, (_, word) in zip(tuned, PROBES))
    print("base:", base_right, base, "\ntuned:", tuned_right, tuned)
    # Measured: 3 of 5 tuned, 0 of 5 base; a margin for a 135M model on a noisy CPU.
    assert tuned_right >= 2 and tuned_right > base_right

    # The served adapter is the adapter: vLLM's greedy replies with it (its LoRA on the CPU is
    # runner/text/cpu_lora.py) are, token by token, what peft with the same files would choose.
    gaps = _served_against_peft(real_runner, real_model_dir, final["lora_dir"], [q for q, _ in PROBES])
    print("below peft's best token, at worst:", gaps)
    assert all(gap <= 0.5 for gap in gaps["adapter"]), gaps
    assert all(gap > 2 for gap in gaps["base"]), gaps  # the check tells the adapter from no adapter
