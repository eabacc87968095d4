"""Backups that restore: `helix backup DIR` while another user keeps writing, then `helix restore
DIR` into a fresh installation (its own database, Redis and filestore, its control plane
running): every session, interaction, question/answer pair, adapter and file of the moment the
backup began is there, read back through the API with the user's own key."""
from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
import requests

from tests.conftest import TEXT_MODEL, start_control_plane
from tests.test_user_deletion import everything_of_a_user, helix


def files_of(base_url: str, user, path: str = "") -> dict[str, bytes]:
    """Every file of the user's filestore, by path, with its bytes."""
    found = {}
    r = requests.get(f"{base_url}/api/v1/filestore/list", params={"path": path}, headers=user.headers, timeout=30)
    assert r.status_code == 200, r.text
    for entry in r.json():
        if entry["directory"]:
            found.update(files_of(base_url, user, entry["path"]))
        else:
            got = requests.get(f"{base_url}/api/v1/filestore/viewer/{entry['path']}", headers=user.headers, timeout=30)
            assert got.status_code == 200, (entry, got.text)
            found[entry["path"]] = got.content
    return found


def session(base_url: str, user, session_id: str) -> dict:
    r = requests.get(f"{base_url}/api/v1/sessions/{session_id}", headers=user.headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.timeout(600)
def test_a_backup_taken_during_writes_restores_into_a_fresh_installation(
        live_server, live_filestore, runner, services, make_live_user, tmp_path):
    user, busy = make_live_user(), make_live_user()
    made = everything_of_a_user(live_server, user)
    talked, pictured, tuned_id, client = made["chat"], made["image"], made["tuned"]["id"], made["client"]
    before = {sid: session(live_server, user, sid) for sid in (talked["id"], pictured["id"], tuned_id)}
    assert sum(len(i.get("qa_pairs") or []) for i in before[tuned_id]["interactions"]) == 6
    assert before[tuned_id]["lora_dir"]
    stored = files_of(live_server, user)
    assert any(p.startswith(before[tuned_id]["lora_dir"]) for p in stored)  # the adapter's files
    assert "notes/mine.txt" in stored and pictured["interactions"][-1]["files"][0] in stored

    # Another user keeps creating sessions and files while the backup runs.
    stop, written = threading.Event(), []

    def keep_writing():
        while not stop.is_set():
            r = requests.post(f"{live_server}/api/v1/sessions", headers=busy.headers, timeout=30,
                              data={"input": "busy", "mode": "inference", "type": "text", "max_tokens": "2"})
            requests.post(f"{live_server}/api/v1/filestore/upload?path=busy", headers=busy.headers, timeout=30,
                          files={"files": (f"{uuid.uuid4().hex}.txt", b"x" * 1000)})
            written.append(r.status_code)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        made = helix(services, live_filestore, "backup", str(tmp_path / "backup"))
    finally:
        stop.set()
        writer.join()
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"backed up {tmp_path / 'backup'} as of ") and len(written) >= 1, made.stdout
    print(made.stdout)

    # A fresh installation: its own database (migrated by its control plane), Redis and filestore.
    fresh_db = f"restored_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services["database_url"], autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {fresh_db}")
    fresh = {"DATABASE_URL": services["database_url"].rsplit("/", 1)[0] + "/" + fresh_db,
             "REDIS_URL": services["redis_url"].rsplit("/", 1)[0] + "/3", "HELIX_FILESTORE": str(tmp_path / "files"),
             "HELIX_TEXT_MODELS": TEXT_MODEL}
    url, proc = start_control_plane(services, tmp_path, **fresh)
    try:
        assert requests.get(f"{url}/api/v1/sessions", headers=user.headers, timeout=30).status_code == 401
        restored = helix(services, tmp_path / "files", "restore", str(tmp_path / "backup"),
                         DATABASE_URL=fresh["DATABASE_URL"])
        assert restored.returncode == 0, restored.stderr
        print(restored.stdout)
        for sid, was in before.items():
            assert session(url, user, sid) == was
        assert files_of(url, user) == stored
        listed = requests.get(f"{url}/v1/files", headers=user.headers, timeout=30).json()["data"]
        assert [f["id"] for f in listed] == [f.id for f in client.files.list()]

        again = helix(services, tmp_path / "files", "restore", str(tmp_path / "backup"),
                      DATABASE_URL=fresh["DATABASE_URL"])
        assert again.returncode == 1 and "restore into a fresh one" in again.stderr
    finally:
        proc.stop()

    into_used = helix(services, live_filestore, "backup", str(tmp_path / "backup"))
    assert into_used.returncode == 1 and "is not empty" in into_used.stderr
    (tmp_path / "half").mkdir()
    half = helix(services, live_filestore, "restore", str(tmp_path / "half"))
    assert half.returncode == 1 and "not a backup" in half.stderr


def test_the_filestore_backs_up_from_s3_and_restores_into_a_local_folder_and_back(s3_server, tmp_path):
    """The same files, byte for byte, whichever the backup's filestore and the restore's: every
    file and empty folder, and nothing of an S3 folder's marker or a file still being written."""
    import io

    from controlplane.backups import files
    from controlplane.storage.filestore import LocalFilestore, S3Filestore

    s3 = S3Filestore(f"s3://{s3_server.bucket}/backup-{uuid.uuid4().hex[:6]}", s3_server.endpoint_url)
    written = {f"users/u{i}/sessions/s{i}/outputs/i/{name}": f"{i}{name}".encode() * 100
               for i in range(3) for name in ("a.png", "adapter_model.safetensors")}
    written["users/u0/notes/plan.txt"] = b"the plan"
    for key, data in written.items():
        s3.write(key, io.BytesIO(data))
    s3.mkdir("users/u1/empty")
    counted = files.export(s3, tmp_path / "from-s3")
    assert counted == {"files": len(written), "folders": counted["folders"],
                       "bytes": sum(map(len, written.values()))} and counted["folders"] >= 10
    local = LocalFilestore(tmp_path / "local")
    assert files.load(local, tmp_path / "from-s3") == len(written)
    assert {f.path: local.open(f.path).read() for f in files.walk(local) if not f.directory} == written
    assert local.stat("users/u1/empty").directory
    files.export(local, tmp_path / "from-local")
    again = S3Filestore(f"s3://{s3_server.bucket}/again-{uuid.uuid4().hex[:6]}", s3_server.endpoint_url)
    files.load(again, tmp_path / "from-local")
    assert {f.path: again.open(f.path).read() for f in files.walk(again) if not f.directory} == written
