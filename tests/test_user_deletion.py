"""A user deleted for good (`helix users delete`): afterwards nothing of theirs is left anywhere:
not a row in any table, not a file in the filestore, not an adapter on the runner's disk or in
its vLLM, not a key or an entry in Redis; and another user's work is untouched. Their usage is
deleted, or kept anonymised where the operator asks for it.

The live stack (gunicorn, a real runner with the tiny models) is the suite's shared one."""
from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
import requests
from psycopg.rows import dict_row
from redis import Redis

from shared.finetune import adapter_name
from tests.conftest import REPO, TEXT_MODEL, User, vllm_url, wait_for_session, wait_until, work_dir
from tests.test_openai_finetuning import examples, follow, sdk, upload


def helix(services, live_filestore, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The operator's `helix` command on the live stack."""
    return subprocess.run(
        [sys.executable, "-m", "controlplane.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "DATABASE_URL": services["database_url"], "REDIS_URL": services["redis_url"],
             "HELIX_FILESTORE": str(live_filestore), "HELIX_STATE_DIR": str(live_filestore / "no-state"), **env})


def chat(live_server, user: User, text: str = "hello") -> dict:
    r = requests.post(f"{live_server}/api/v1/sessions", headers=user.headers, timeout=30,
                      data={"input": text, "mode": "inference", "type": "text", "max_tokens": "4"})
    assert r.status_code == 201, r.text
    return wait_for_session(live_server, user, r.json()["id"])


def everything_of_a_user(live_server, user: User) -> dict:
    """What a user leaves behind: a chat, an image, a file of their own (notes/mine.txt), an OpenAI
    file and the adapter fine-tuned from it, trained on the runner."""
    talked = chat(live_server, user, "my secret chat")
    r = requests.post(f"{live_server}/api/v1/sessions", headers=user.headers, timeout=30,
                      data={"input": "a fish", "mode": "inference", "type": "image"})
    pictured = wait_for_session(live_server, user, r.json()["id"])
    assert pictured["interactions"][-1]["files"], pictured
    r = requests.post(f"{live_server}/api/v1/filestore/upload?path=notes", headers=user.headers, timeout=30,
                      files={"files": ("mine.txt", b"private notes")})
    assert r.status_code == 201, r.text
    client = sdk(live_server, user)
    job = client.fine_tuning.jobs.create(model=TEXT_MODEL, training_file=upload(client, examples()).id,
                                         hyperparameters={"n_epochs": 1, "batch_size": 3})
    done = follow(client, job.id)
    assert done.status == "succeeded", done.error
    return {"chat": talked, "image": pictured, "client": client, "model": done.fine_tuned_model,
            "tuned": wait_for_session(live_server, user, job.id.removeprefix("ftjob-"))}


def mentions_in_database(database_url: str, needles: set[str]) -> list[str]:
    """Every table and column, of any type, whose text holds one of `needles`."""
    found = []
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as conn:
        columns = conn.execute("SELECT table_name, column_name FROM information_schema.columns"
                               " WHERE table_schema = 'public'").fetchall()
        for c in columns:
            for needle in needles:
                hit = conn.execute(f'SELECT 1 FROM "{c["table_name"]}" WHERE "{c["column_name"]}"::text LIKE %s'
                                   " LIMIT 1", (f"%{needle}%",)).fetchone()
                if hit:
                    found.append(f"{c['table_name']}.{c['column_name']} holds {needle}")
    return found


def mentions_in_redis(redis: Redis, needles: set[str]) -> list[str]:
    """Every key whose name or content holds one of `needles`."""
    wanted = [n.encode() for n in needles]
    found = []
    for key in redis.scan_iter(count=1000):
        kind = redis.type(key)
        content = {b"string": lambda: [redis.get(key) or b""], b"list": lambda: redis.lrange(key, 0, -1),
                   b"set": lambda: list(redis.smembers(key)), b"zset": lambda: redis.zrange(key, 0, -1),
                   b"hash": lambda: [b for kv in redis.hgetall(key).items() for b in kv],
                   b"stream": lambda: [repr(e).encode() for e in redis.xrange(key)]}.get(kind, lambda: [])()
        if any(n in key or any(n in part for part in content) for n in wanted):
            found.append(key.decode(errors="replace"))
    return found


def files_under(folder, needles: set[str]) -> list[str]:
    return [str(p) for p in folder.rglob("*") if any(n in str(p) for n in needles)]


@pytest.mark.timeout(600)
def test_a_deleted_user_leaves_nothing_anywhere(live_server, live_filestore, runner, services, make_live_user):
    user, other = make_live_user(), make_live_user()
    kept = chat(live_server, other, "the other user's chat")

    # Everything a user leaves behind, the fine-tuned adapter served by the runner's vLLM, a second key.
    made = everything_of_a_user(live_server, user)
    talked, pictured, tuned = made["chat"], made["image"], made["tuned"]
    reply = made["client"].chat.completions.create(model=made["model"], max_tokens=4,
                                                   messages=[{"role": "user", "content": "Who founded it?"}])
    assert reply.choices[0].message.content
    adapter = adapter_name(tuned["lora_dir"])
    assert (work_dir(runner) / "adapters" / adapter).is_dir()
    vllm = vllm_url(runner)
    assert adapter in [m["id"] for m in requests.get(f"{vllm}/v1/models", timeout=10).json()["data"]]
    r = requests.post(f"{live_server}/api/v1/api_keys", headers=user.headers, json={"name": "second"}, timeout=10)
    assert r.status_code in (200, 201), r.text

    sessions = [talked["id"], pictured["id"], tuned["id"]]
    interactions = [i["id"] for s in (talked, pictured, tuned) for i in s["interactions"]]
    with psycopg.connect(services["database_url"], row_factory=dict_row) as conn:
        usage = conn.execute("SELECT count(*) FROM usage_records WHERE owner = %s", (user.id,)).fetchone()["count"]
        owned = conn.execute("SELECT count(*) FROM sessions WHERE owner = %s", (user.id,)).fetchone()["count"]
    assert usage >= 3 and owned >= 3  # a chat, an image, a fine-tune (and the fine-tuned model's chat)

    deleted = helix(services, live_filestore, "users", "delete", user.row['email'], "--yes")
    assert deleted.returncode == 0, deleted.stderr
    print(deleted.stdout)
    assert f"deleted user {user.row['email']} ({user.id})" in deleted.stdout
    assert f"  sessions: {owned}" in deleted.stdout
    assert "  API keys: 2" in deleted.stdout and f"  usage records: {usage}, deleted" in deleted.stdout
    assert "  adapters (runners delete theirs when they next report): 1" in deleted.stdout
    assert "every live runner has deleted the adapters from its disk" in deleted.stdout

    needles = {user.id, user.row['email'], *sessions, *interactions}
    assert mentions_in_database(services["database_url"], needles) == []
    assert mentions_in_redis(Redis.from_url(services["redis_url"]), needles) == []
    assert files_under(live_filestore, needles) == []
    assert not (live_filestore / "users" / user.id).exists()
    assert files_under(work_dir(runner), needles | {adapter}) == []
    assert adapter not in [m["id"] for m in requests.get(f"{vllm}/v1/models", timeout=10).json()["data"]]
    assert requests.get(f"{live_server}/api/v1/sessions", headers=user.headers, timeout=10).status_code == 401

    # The other user's work is untouched, and the platform goes on serving them.
    r = requests.get(f"{live_server}/api/v1/sessions/{kept['id']}", headers=other.headers, timeout=10)
    assert r.status_code == 200 and r.json()["interactions"][-1]["message"] == kept["interactions"][-1]["message"]
    assert chat(live_server, other, "still here?")["interactions"][-1]["state"] == "complete"

    again = helix(services, live_filestore, "users", "delete", user.row['email'], "--yes")
    assert again.returncode == 1 and f"no user {user.row['email']!r}" in again.stderr


def test_usage_is_kept_anonymised_where_the_operator_asks(live_server, live_filestore, runner, services,
                                                          make_live_user):
    user = make_live_user()
    talked = chat(live_server, user)
    finished = talked["interactions"][-1]["id"]
    wait_until(lambda: usage_of(services, finished), 30, "the chat's usage recorded")

    deleted = helix(services, live_filestore, "users", "delete", user.row['email'], "--yes",
                    HELIX_DELETED_USER_USAGE="anonymise")
    assert deleted.returncode == 0, deleted.stderr
    assert "  usage records: 1, anonymised" in deleted.stdout
    kept = usage_of(services, finished)
    assert kept["owner"].startswith("deleted-") and kept["session_id"] == "" and kept["api_key_id"] is None
    assert kept["completion_tokens"] > 0 and kept["model"] == TEXT_MODEL
    assert mentions_in_database(services["database_url"], {user.id, user.row['email'], talked["id"]}) == []

    wrong = helix(services, live_filestore, "users", "delete", "nobody@example.com", "--yes")
    assert wrong.returncode == 1 and "no user 'nobody@example.com'" in wrong.stderr
    bad = helix(services, live_filestore, "users", "delete", user.row['email'], "--yes", HELIX_DELETED_USER_USAGE="keep")
    assert bad.returncode != 0 and "HELIX_DELETED_USER_USAGE must be delete or anonymise" in bad.stderr


def usage_of(services, interaction_id: str) -> dict | None:
    with psycopg.connect(services["database_url"], row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM usage_records WHERE interaction_id = %s", (interaction_id,)).fetchone()
