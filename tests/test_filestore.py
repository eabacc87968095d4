"""The filestore routes: confinement to the user's root, isolation, limits; each on a local
directory and on a real S3-compatible server."""
from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest


@pytest.fixture()
def client(files_client):
    """Every test here runs on both filestore backends."""
    return files_client


def upload(client, user, path, name, data: bytes):
    return client.post(f"/api/v1/filestore/upload?path={path}", headers=user.headers,
                       data={"files": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def test_upload_list_get_download_rename_delete(client, user):
    r = upload(client, user, "docs", "a.txt", b"hello")
    assert r.status_code == 201, r.json
    assert r.json[0]["path"] == "docs/a.txt" and r.json[0]["size"] == 5
    listed = client.get("/api/v1/filestore/list?path=docs", headers=user.headers).json
    assert [(f["name"], f["directory"]) for f in listed] == [("a.txt", False)]
    root = client.get("/api/v1/filestore/list", headers=user.headers).json
    assert [(f["name"], f["directory"]) for f in root] == [("docs", True)]
    info = client.get("/api/v1/filestore/get?path=docs/a.txt", headers=user.headers).json
    body = client.get(info["url"], headers=user.headers)
    assert body.status_code == 200 and body.data == b"hello"
    assert "sandbox" in body.headers["Content-Security-Policy"]  # never a page of this origin
    assert client.post("/api/v1/filestore/folder?path=more/deep", headers=user.headers).status_code == 201
    r = client.put("/api/v1/filestore/rename?path=docs/a.txt&new_path=more/deep/b.txt", headers=user.headers)
    assert r.status_code == 200 and r.json["path"] == "more/deep/b.txt"
    assert client.get("/api/v1/filestore/get?path=docs/a.txt", headers=user.headers).status_code == 404
    assert client.delete("/api/v1/filestore/delete?path=more", headers=user.headers).status_code == 200
    assert client.get("/api/v1/filestore/get?path=more/deep/b.txt", headers=user.headers).status_code == 404


@pytest.mark.parametrize("path", ["../x", "docs/../../x", "/etc/passwd", "a\\..\\b", "a/..", "a%00b"])
def test_hostile_paths_are_refused(client, user, path):
    for url in (f"/api/v1/filestore/list?path={path}", f"/api/v1/filestore/get?path={path}"):
        r = client.get(url, headers=user.headers)
        assert r.status_code == 400, (url, r.json)
        assert "path" in r.json["error"]
    assert upload(client, user, path, "f.txt", b"x").status_code == 400
    assert client.delete(f"/api/v1/filestore/delete?path={path}", headers=user.headers).status_code == 400


def test_hostile_upload_file_names_are_refused(client, user):
    assert upload(client, user, "", "../escape.txt", b"x").status_code == 400
    assert upload(client, user, "", "..", b"x").status_code == 400


def test_viewer_refuses_traversal(client, user):
    r = client.get("/api/v1/filestore/viewer/..%2F..%2Fetc%2Fpasswd", headers=user.headers)
    assert r.status_code in (400, 404)
    assert client.get("/api/v1/filestore/viewer/a/../../x", headers=user.headers).status_code in (400, 404)


def test_symlink_out_of_the_root_is_refused(user, app, tmp_path):
    client = app.test_client()  # symbolic links exist only in the local directory
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    upload(client, user, "", "ok.txt", b"fine")
    user_root = Path(app.config["HELIX"].filestore) / "users" / user.id
    os.symlink(secret, user_root / "link.txt")
    os.symlink(tmp_path, user_root / "linkdir")
    assert client.get("/api/v1/filestore/viewer/link.txt", headers=user.headers).status_code == 400
    assert client.get("/api/v1/filestore/list?path=linkdir", headers=user.headers).status_code == 400
    assert upload(client, user, "linkdir", "x.txt", b"x").status_code == 400
    assert not (tmp_path / "x.txt").exists()


def test_other_users_files_are_404(client, make_user):
    alice, bob = make_user(), make_user()
    upload(client, alice, "private", "a.txt", b"alice only")
    assert client.get("/api/v1/filestore/get?path=private/a.txt", headers=bob.headers).status_code == 404
    assert client.get("/api/v1/filestore/viewer/private/a.txt", headers=bob.headers).status_code == 404
    assert client.get("/api/v1/filestore/list?path=private", headers=bob.headers).json == []
    assert client.delete("/api/v1/filestore/delete?path=private/a.txt", headers=bob.headers).status_code == 404
    assert client.get("/api/v1/filestore/viewer/private/a.txt", headers=alice.headers).data == b"alice only"
    assert client.get("/api/v1/filestore/list").status_code == 401


def test_oversized_upload_is_413(client, user):
    r = upload(client, user, "", "big.bin", b"x" * (3 * 1024 * 1024))
    assert r.status_code == 413 and "error" in r.json
    assert client.get("/api/v1/filestore/get?path=big.bin", headers=user.headers).status_code == 404


def test_upload_needs_files_and_rename_needs_free_target(client, user):
    r = client.post("/api/v1/filestore/upload", headers=user.headers, data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and "files" in r.json["error"]
    upload(client, user, "", "one.txt", b"1")
    upload(client, user, "", "two.txt", b"2")
    r = client.put("/api/v1/filestore/rename?path=one.txt&new_path=two.txt", headers=user.headers)
    assert r.status_code == 409
    assert client.post("/api/v1/filestore/folder", headers=user.headers).status_code == 400


def test_files_and_folders_never_share_a_name(client, user):
    assert upload(client, user, "", "note.txt", b"1").status_code == 201
    assert client.post("/api/v1/filestore/folder?path=box", headers=user.headers).status_code == 201
    # A file where a folder is, a folder where a file is, a file inside a file: 409, nothing changed.
    r = upload(client, user, "", "box", b"x")
    assert r.status_code == 409 and "error" in r.json
    assert client.post("/api/v1/filestore/folder?path=note.txt", headers=user.headers).status_code == 409
    assert client.post("/api/v1/filestore/folder?path=note.txt/inner", headers=user.headers).status_code == 409
    assert upload(client, user, "note.txt", "inner.txt", b"x").status_code == 409
    r = client.put("/api/v1/filestore/rename?path=note.txt&new_path=box", headers=user.headers)
    assert r.status_code == 409
    listed = client.get("/api/v1/filestore/list", headers=user.headers).json
    assert sorted((f["name"], f["directory"]) for f in listed) == [("box", True), ("note.txt", False)]
    assert client.get("/api/v1/filestore/viewer/note.txt", headers=user.headers).data == b"1"


def test_folders_rename_with_their_contents(client, user):
    upload(client, user, "album/2024", "a.txt", b"a")
    upload(client, user, "album", "b.txt", b"b")
    r = client.put("/api/v1/filestore/rename?path=album&new_path=photos", headers=user.headers)
    assert r.status_code == 200 and r.json["directory"]
    assert client.get("/api/v1/filestore/viewer/photos/2024/a.txt", headers=user.headers).data == b"a"
    assert client.get("/api/v1/filestore/viewer/photos/b.txt", headers=user.headers).data == b"b"
    assert client.get("/api/v1/filestore/list?path=album", headers=user.headers).json == []
    r = client.put("/api/v1/filestore/rename?path=photos&new_path=photos/2024/again", headers=user.headers)
    assert r.status_code == 400 and "inside" in r.json["error"]
    assert client.get("/api/v1/filestore/viewer/photos/b.txt", headers=user.headers).data == b"b"


@pytest.mark.parametrize("name", ["a" * 239, "文" * 100], ids=["239-bytes", "100-cjk-300-bytes"])
def test_names_longer_than_a_filesystem_allows_are_400(client, user, name):
    q = quote(name)
    assert upload(client, user, "", name, b"x").status_code == 400  # was a 500 (OSError, errno 36)
    assert upload(client, user, q, "f.txt", b"x").status_code == 400
    upload(client, user, "", "ok.txt", b"x")
    for method, url in (("get", f"list?path={q}"), ("get", f"get?path={q}"), ("get", f"viewer/{q}"),
                        ("post", f"folder?path={q}"), ("post", f"folder?path=deep/{q}/er"),
                        ("put", f"rename?path=ok.txt&new_path={q}"), ("put", f"rename?path={q}&new_path=b"),
                        ("delete", f"delete?path={q}")):
        r = getattr(client, method)(f"/api/v1/filestore/{url}", headers=user.headers)
        assert r.status_code == 400, (url, r.status_code, r.data[:200])
        assert "200 bytes" in r.json["error"]
    assert [f["name"] for f in client.get("/api/v1/filestore/list", headers=user.headers).json] == ["ok.txt"]


def test_a_name_of_exactly_the_limit_works(client, user):
    name = "文" * 66 + "ab"  # 200 bytes
    r = upload(client, user, quote(name), name, b"hello")
    assert r.status_code == 201, r.json
    assert client.get(r.json[0]["url"], headers=user.headers).data == b"hello"
    r = client.put(f"/api/v1/filestore/rename?path={quote(name)}/{quote(name)}&new_path={quote(name)}/b.txt",
                   headers=user.headers)
    assert r.status_code == 200, r.json


def test_concurrent_uploads_of_one_name_all_succeed(app, user):
    """Each upload is written aside under its own name, then renamed into place."""
    bodies = [bytes([65 + i]) * 300_000 for i in range(20)]
    start = threading.Barrier(len(bodies))

    def send(body: bytes):
        client = app.test_client()
        start.wait()
        return upload(client, user, "race", "same.txt", body).status_code

    with ThreadPoolExecutor(len(bodies)) as pool:
        statuses = list(pool.map(send, bodies))
    assert statuses == [201] * len(bodies)  # were 5-6 of 20 answering 500 (FileNotFoundError)
    kept = app.test_client().get("/api/v1/filestore/viewer/race/same.txt", headers=user.headers).data
    assert kept in bodies
    folder = Path(app.config["HELIX"].filestore) / "users" / user.id / "race"
    assert os.listdir(folder) == ["same.txt"]  # no file written aside is left behind


def test_a_refused_upload_stores_nothing(client, user):
    r = client.post("/api/v1/filestore/upload", headers=user.headers, content_type="multipart/form-data",
                    data={"files": [(io.BytesIO(b"1"), "ok1.txt"), (io.BytesIO(b"2"), "..")]})
    assert r.status_code == 400
    assert client.get("/api/v1/filestore/get?path=ok1.txt", headers=user.headers).status_code == 404
    assert client.get("/api/v1/filestore/list", headers=user.headers).json == []


def test_an_upload_refused_for_a_conflict_stores_nothing(client, user):
    """Conflicts are checked for every file before any is written (ok1.txt was kept on a 409)."""
    assert client.post("/api/v1/filestore/folder?path=taken", headers=user.headers).status_code == 201
    r = client.post("/api/v1/filestore/upload", headers=user.headers, content_type="multipart/form-data",
                    data={"files": [(io.BytesIO(b"1"), "ok1.txt"), (io.BytesIO(b"2"), "taken")]})
    assert r.status_code == 409, r.json
    assert client.get("/api/v1/filestore/get?path=ok1.txt", headers=user.headers).status_code == 404
    assert "taken" in r.json["error"]  # which name is in the way
    assert upload(client, user, "", "note", b"x").status_code == 201
    r = client.post("/api/v1/filestore/upload?path=note/sub", headers=user.headers,
                    content_type="multipart/form-data", data={"files": [(io.BytesIO(b"1"), "ok2.txt")]})
    assert r.status_code == 409, r.json  # a file where the folder should be
    listed = client.get("/api/v1/filestore/list", headers=user.headers).json
    assert sorted((f["name"], f["directory"]) for f in listed) == [("note", False), ("taken", True)]


def test_a_plans_storage_bytes_refuse_an_upload_past_them_and_store_nothing(client, db):
    import uuid

    from controlplane.accounts import store as accounts
    from controlplane.usage import plans
    from tests.conftest import User

    plan = f"storage-{uuid.uuid4().hex[:6]}"
    plans.set_plan(db, plan, plans.Limits(storage_bytes=6000))
    row = accounts.create_user(db, f"storer-{uuid.uuid4().hex[:8]}@example.com", plan=plan)
    user = User(row, accounts.create_api_key(db, row["id"], "k")[1])
    assert upload(client, user, "docs", "a.bin", os.urandom(3000)).status_code == 201
    refused = upload(client, user, "docs", "b.bin", os.urandom(3000))  # 6000 and the multipart around it
    assert refused.status_code == 429 and refused.json["limit"] == "storage_bytes", refused.json
    assert refused.json["used_bytes"] == 3000 and "past your plan's 6000" in refused.json["error"]
    listed = client.get("/api/v1/filestore/list?path=docs", headers=user.headers).json
    assert [f["name"] for f in listed] == ["a.bin"]
    assert client.delete("/api/v1/filestore/delete?path=docs/a.bin", headers=user.headers).status_code == 200
    assert upload(client, user, "docs", "b.bin", os.urandom(3000)).status_code == 201
