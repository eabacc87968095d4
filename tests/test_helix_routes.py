"""Routes a Helix client calls that the reference leaves out (issue 20, item 2), answered in
Helix's shapes: the server's config and the caller's status, the filestore's config, checking and
creating API keys as Helix's client does, renaming a session, its summary, its settings, and
sharing it read only with everyone signed in (admins read any session, each read logged)."""
from __future__ import annotations

import io
import logging
import uuid

from controlplane.accounts import store as accounts
from tests.conftest import User


def _chat(client, user, text="What is the Zorblat Library?") -> dict:
    r = client.post("/api/v1/sessions", headers=user.headers,
                    data={"input": text, "mode": "inference", "type": "text"})
    assert r.status_code == 201, r.json
    return r.json


def _finetune(client, user) -> dict:
    r = client.post("/api/v1/sessions", headers=user.headers, content_type="multipart/form-data", data={
        "mode": "finetune", "type": "text", "files": [(io.BytesIO(b"Mira founded the Zorblat Library."), "a.txt")]})
    assert r.status_code == 201, r.json
    return r.json


def test_config_and_status_in_helix_shapes(client, user):
    config = client.get("/api/v1/config")  # no key needed, as in Helix
    assert config.status_code == 200
    assert config.json["filestore_prefix"].endswith("/api/v1/filestore/viewer")
    assert config.json["stripe_enabled"] is False
    status = client.get("/api/v1/status", headers=user.headers)
    assert status.status_code == 200
    assert status.json["admin"] is False and status.json["user"] == user.id
    assert status.json["config"] == {"stripe_subscription_active": False, "stripe_customer_id": "",
                                     "stripe_subscription_id": ""}
    assert client.get("/api/v1/status").status_code == 401


def test_filestore_config_names_the_read_only_sessions_folder_and_keeps_it_so(client, user):
    r = client.get("/api/v1/filestore/config", headers=user.headers)
    assert r.json == {"user_prefix": "", "folders": [{"name": "sessions", "readonly": True}]}
    session = _finetune(client, user)
    document = f"sessions/{session['id']}/documents/a.txt"
    assert client.get(f"/api/v1/filestore/get?path={document}", headers=user.headers).status_code == 200
    refused = [
        client.post("/api/v1/filestore/upload?path=sessions", headers=user.headers, content_type="multipart/form-data",
                    data={"files": [(io.BytesIO(b"x"), "mine.txt")]}),
        client.post("/api/v1/filestore/folder?path=sessions/new", headers=user.headers),
        client.put(f"/api/v1/filestore/rename?path={document}&new_path=elsewhere.txt", headers=user.headers),
        client.put("/api/v1/filestore/rename?path=x.txt&new_path=sessions/x.txt", headers=user.headers),
        client.delete(f"/api/v1/filestore/delete?path={document}", headers=user.headers),
    ]
    for r in refused:
        assert r.status_code == 400 and "read only" in r.json["error"], r.json
    assert client.get(f"/api/v1/filestore/get?path={document}", headers=user.headers).status_code == 200
    # The rest of the filestore is the user's to write.
    assert client.post("/api/v1/filestore/folder?path=notes", headers=user.headers).status_code == 201
    # Items in Helix's FileStoreItem shape: created in Unix seconds, the url to read the file at.
    item = client.get(f"/api/v1/filestore/get?path={document}", headers=user.headers).json
    assert isinstance(item["created"], int) and item["created"] > 1_700_000_000
    assert item["url"].startswith("http") and client.get(item["url"], headers=user.headers).data.startswith(b"Mira")
    folder = next(i for i in client.get("/api/v1/filestore/list", headers=user.headers).json if i["name"] == "notes")
    assert folder["directory"] is True and folder["url"] == ""


def test_api_keys_as_helix_s_client_makes_and_checks_them(client, user, make_user):
    made = client.post("/api/v1/api_keys?name=cli", headers=user.headers)
    assert made.status_code == 201 and isinstance(made.json, str) and made.json.startswith("hl-")
    key = made.json
    checked = client.get(f"/api/v1/api_keys/check?key={key}", headers=user.headers)
    assert checked.status_code == 200
    assert {"owner": user.id, "owner_type": "user", "key": key, "name": "cli"}.items() <= checked.json.items()
    # Another user's key, or no key at all: null, as Helix answered an unknown one.
    stranger = make_user()
    assert client.get(f"/api/v1/api_keys/check?key={key}", headers=stranger.headers).json is None
    assert client.get("/api/v1/api_keys/check?key=hl-nothing", headers=user.headers).json is None
    assert client.get("/api/v1/api_keys/check", headers=user.headers).status_code == 400
    assert client.post("/api/v1/api_keys?name=" + "n" * 300, headers=user.headers).status_code == 400
    # The key works; its list item names it by its hint only.
    assert client.get("/api/v1/sessions", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    listed = next(k for k in client.get("/api/v1/api_keys", headers=user.headers).json if k["name"] == "cli")
    assert listed["key"] == listed["hint"] != key


def test_rename_and_summary(client, user, make_user):
    chat = _chat(client, user)
    sid = chat["id"]
    # Helix's session fields besides: no bots here; each turn's text as `messages`.
    assert chat["parent_bot"] == chat["child_bot"] == ""
    assert chat["interactions"][0]["messages"] == [{"role": "user", "content": "What is the Zorblat Library?"}]
    assert chat["interactions"][1]["messages"] == []  # no reply yet
    r = client.put(f"/api/v1/sessions/{sid}/meta", headers=user.headers,
                   json={"id": sid, "name": "Library questions", "owner": user.id, "owner_type": "user"})
    assert r.status_code == 200, r.json
    assert r.json["name"] == "Library questions" and len(r.json["interactions"]) == 2
    for body, says in (({"name": "  "}, "missing 'name'"), ({"name": "x" * 201}, "limit is 200"),
                       ({"name": "x", "id": "another"}, "must be this session's"),
                       ({"name": "x", "owner": "someone-else"}, "cannot be given away")):
        bad = client.put(f"/api/v1/sessions/{sid}/meta", headers=user.headers, json=body)
        assert bad.status_code == 400 and says in bad.json["error"], (body, bad.json)
    stranger = make_user()
    renamed_by_stranger = client.put(f"/api/v1/sessions/{sid}/meta", headers=stranger.headers, json={"name": "mine"})
    assert renamed_by_stranger.status_code == 404

    summary = client.get(f"/api/v1/sessions/{sid}/summary", headers=user.headers).json
    assert summary["session_id"] == sid and summary["name"] == "Library questions"
    assert summary["interaction_id"] == chat["interactions"][-1]["id"]
    assert summary["summary"] == "What is the Zorblat Library?"
    assert (summary["mode"], summary["type"], summary["owner"]) == ("inference", "text", user.id)
    assert {"created", "updated", "scheduled", "completed", "model_name", "lora_dir", "priority"} <= set(summary)
    finetune = _finetune(client, user)
    assert client.get(f"/api/v1/sessions/{finetune['id']}/summary",
                      headers=user.headers).json["summary"] == "fine tuning on 1 files"
    # The session list: Helix's summaries (the session's own fields beside them), and its counter.
    listed = client.get("/api/v1/sessions", headers=user.headers).json
    assert listed["counter"] == {"count": 2}
    assert [s["summary"] for s in listed["sessions"]] == ["fine tuning on 1 files", "What is the Zorblat Library?"]
    assert summary.items() <= listed["sessions"][1].items() and listed["sessions"][1]["id"] == sid
    assert client.get(f"/api/v1/sessions/{sid}/summary", headers=stranger.headers).status_code == 404


def test_a_shared_session_is_read_only_to_others_and_admins_reads_are_logged(client, user, make_user, db, caplog):
    session = _finetune(client, user)
    sid = session["id"]
    assert session["config"]["shared"] is False and session["config"]["origin"]["type"] == "user_created"
    assert session["config"]["original_mode"] == "finetune"
    stranger = make_user()
    document = f"/api/v1/filestore/viewer/sessions/{sid}/documents/a.txt"
    assert client.get(f"/api/v1/sessions/{sid}", headers=stranger.headers).status_code == 404
    assert client.get(document, headers=stranger.headers).status_code == 404

    r = client.put(f"/api/v1/sessions/{sid}/config", headers=user.headers,
                   json={**session["config"], "shared": True, "avatar": "https://example.com/a.png"})
    assert r.status_code == 200, r.json
    assert r.json["shared"] is True and r.json["avatar"] == "https://example.com/a.png"
    assert r.json["original_mode"] == "finetune"  # what the platform derives stays as it is
    assert client.put(f"/api/v1/sessions/{sid}/config", headers=user.headers,
                      json={"shared": "sometimes"}).status_code == 400
    assert client.put(f"/api/v1/sessions/{sid}/config", headers=stranger.headers,
                      json={"shared": False}).status_code == 404

    # Shared: anyone signed in reads it and its files, and changes nothing.
    seen = client.get(f"/api/v1/sessions/{sid}", headers=stranger.headers)
    assert seen.status_code == 200 and seen.json["owner"] == user.id and seen.json["config"]["shared"] is True
    assert client.get(f"/api/v1/sessions/{sid}/summary", headers=stranger.headers).status_code == 200
    viewed = client.get(document, headers=stranger.headers)
    assert viewed.status_code == 200 and viewed.data == b"Mira founded the Zorblat Library."
    assert client.put(f"/api/v1/sessions/{sid}", headers=stranger.headers, data={"input": "hi"}).status_code == 404
    assert client.post(f"/api/v1/sessions/{sid}/cancel", headers=stranger.headers).status_code == 404
    assert client.delete(f"/api/v1/sessions/{sid}", headers=stranger.headers).status_code == 404
    assert client.put(f"/api/v1/sessions/{sid}/meta", headers=stranger.headers, json={"name": "x"}).status_code == 404
    assert client.get(f"/api/v1/sessions/{sid}", headers=user.headers).status_code == 200

    # Unshared: gone for others at once (the status poll's copy is the owner's alone).
    assert client.put(f"/api/v1/sessions/{sid}/config", headers=user.headers, json={"shared": False}).json[
        "shared"] is False
    assert client.get(f"/api/v1/sessions/{sid}", headers=stranger.headers).status_code == 404
    assert client.get(document, headers=stranger.headers).status_code == 404

    # An admin reads any session; each read is logged with who read what.
    admin_row = accounts.create_user(db, f"admin-{uuid.uuid4().hex[:8]}@example.com", is_admin=True)
    admin = User(admin_row, accounts.create_api_key(db, admin_row["id"], "k")[1])
    with caplog.at_level(logging.INFO, logger="helix.audit"):
        assert client.get(f"/api/v1/sessions/{sid}", headers=admin.headers).status_code == 200
    assert any(admin_row["id"] in r.getMessage() and sid in r.getMessage() and user.id in r.getMessage()
               for r in caplog.records if r.name == "helix.audit")


def test_a_clone_says_where_it_came_from_and_is_not_shared(client, user, db):
    session = _finetune(client, user)
    sid, system = session["id"], session["interactions"][-1]
    client.put(f"/api/v1/sessions/{sid}/config", headers=user.headers, json={"shared": True})
    # Cloning needs the pairs written: a runner's data preparation, done here in its place.
    db.execute("UPDATE interactions SET state = 'editing', data_prep_stage = 'edit_questions' WHERE id = %s",
               (system["id"],))
    r = client.post(f"/api/v1/sessions/{sid}/finetune/clone/{system['id']}/just_data", headers=user.headers)
    assert r.status_code == 201, r.json
    origin = r.json["config"]["origin"]
    assert origin == {"type": "cloned", "cloned_session_id": sid, "cloned_interaction_id": system["id"]}
    assert r.json["config"]["shared"] is False


def test_helix_s_web_app_spelling_of_manual_review_is_read(client, user):
    r = client.post("/api/v1/sessions", headers=user.headers, content_type="multipart/form-data", data={
        "mode": "finetune", "type": "text", "manuallyReviewQuestions": "true",
        "files": [(io.BytesIO(b"Mira founded the Zorblat Library."), "a.txt")]})
    assert r.status_code == 201, r.json
    assert r.json["config"]["manually_review_questions"] is True
    assert r.json["config"]["finetune"]["manually_review_questions"] is True
    bad = client.post("/api/v1/sessions", headers=user.headers, content_type="multipart/form-data", data={
        "mode": "finetune", "type": "text", "manuallyReviewQuestions": "maybe",
        "files": [(io.BytesIO(b"Mira founded the Zorblat Library."), "a.txt")]})
    assert bad.status_code == 400 and "manuallyReviewQuestions" in bad.json["error"], bad.json
