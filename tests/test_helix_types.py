"""Every answer a Helix client reads, checked against Helix's own types (tests/helix_types.py):
a field that drifts from Helix's name or JSON type fails here (issue 20, item 4)."""
from __future__ import annotations

import io
import json

import pytest
from psycopg.types.json import Jsonb
from pydantic import TypeAdapter, ValidationError

from controlplane.contract import helix_types as helix


def _check(model, value):
    return TypeAdapter(model).validate_python(value)


@pytest.fixture()
def sessions(client, user, db):
    """A chat, and a fine-tune whose data preparation reported what a runner reports (chunks per
    file, a summary, a training history, numbers and flags in its metadata)."""
    chat = client.post("/api/v1/sessions", headers=user.headers,
                       data={"input": "What is the Zorblat Library?", "mode": "inference", "type": "text"}).json
    finetune = client.post("/api/v1/sessions", headers=user.headers, content_type="multipart/form-data", data={
        "mode": "finetune", "type": "text", "manually_review_questions": "yes",
        "files": [(io.BytesIO(b"Mira founded the Zorblat Library."), "a.txt")]}).json
    system = finetune["interactions"][-1]["id"]
    db.execute(
        "UPDATE interactions SET state = 'editing', data_prep_stage = 'edit_questions', data_prep_chunks = %s,"
        " metadata = %s WHERE id = %s",
        (Jsonb({"a.txt": {"chars": 33, "chunks": [{"index": 0, "question_count": 2, "error": None, "kept": 2}],
                          "error": ""}}),
         Jsonb({"dataprep": {"pairs": 2, "files": 1}, "training_history": [{"step": 1, "loss": 1.5}],
                "attempts": 2, "cancelled": False, "adapter": "lora-x", "seconds": 1.25}), system))
    db.execute("UPDATE interactions SET state = 'complete', finished = true, completed = now(), progress = 100,"
               " message = 'A library of maps.' WHERE id = %s", (chat["interactions"][-1]["id"],))
    return chat, finetune, system


def test_sessions_their_list_summary_and_settings_are_helix_s_types(client, user, sessions):
    chat, finetune, system = sessions
    for sid in (chat["id"], finetune["id"]):
        session = _check(helix.Session, client.get(f"/api/v1/sessions/{sid}", headers=user.headers).json)
        _check(helix.SessionSummary, client.get(f"/api/v1/sessions/{sid}/summary", headers=user.headers).json)
    turn = session.interactions[-1]
    assert turn.metadata == {"attempts": "2", "cancelled": "false", "adapter": "lora-x", "seconds": "1.25"}
    assert turn.data_prep_chunks["a.txt"][0].question_count == 2
    _check(helix.SessionsList, client.get("/api/v1/sessions", headers=user.headers).json)
    _check(helix.Session, client.post("/api/v1/sessions", headers=user.headers,
                                      data={"input": "hi", "mode": "inference", "type": "text"}).json)
    _check(helix.Session, client.put(f"/api/v1/sessions/{chat['id']}", headers=user.headers,
                                     data={"input": "and then?"}).json)
    _check(helix.Session, client.put(f"/api/v1/sessions/{chat['id']}/meta", headers=user.headers,
                                     json={"name": "renamed"}).json)
    _check(helix.SessionMetadata, client.put(f"/api/v1/sessions/{chat['id']}/config", headers=user.headers,
                                             json={"shared": True}).json)
    conversations = client.get(f"/api/v1/sessions/{finetune['id']}/finetune/text/conversations/{system}",
                               headers=user.headers).json
    _check(list[helix.Conversation], conversations)


def test_keys_files_config_and_status_are_helix_s_types(client, user):
    made = client.post("/api/v1/api_keys?name=cli", headers=user.headers).json
    _check(str, made)
    _check(list[helix.ApiKey], client.get("/api/v1/api_keys", headers=user.headers).json)
    _check(helix.ApiKey, client.get(f"/api/v1/api_keys/check?key={made}", headers=user.headers).json)
    client.post("/api/v1/filestore/folder?path=notes", headers=user.headers)
    uploaded = client.post("/api/v1/filestore/upload?path=notes", headers=user.headers,
                           content_type="multipart/form-data", data={"files": [(io.BytesIO(b"x"), "a.txt")]}).json
    _check(list[helix.FileStoreItem], uploaded)
    _check(list[helix.FileStoreItem], client.get("/api/v1/filestore/list", headers=user.headers).json)
    _check(helix.FileStoreItem, client.get("/api/v1/filestore/get?path=notes/a.txt", headers=user.headers).json)
    _check(helix.FilestoreConfig, client.get("/api/v1/filestore/config", headers=user.headers).json)
    _check(helix.ServerConfig, client.get("/api/v1/config").json)
    _check(helix.UserStatus, client.get("/api/v1/status", headers=user.headers).json)


@pytest.mark.parametrize("change", [
    {"metadata": {"attempts": 2}},             # a number where Helix's map holds strings
    {"completed": None},                       # null where Helix always sent a time
    {"data_prep_chunks": {"a.txt": {"chunks": []}}},  # an object where Helix listed chunks
    {"state": "cancelled"},                    # a state Helix does not have
])
def test_the_types_are_strict_enough_to_catch_a_drift(client, user, change):
    chat = client.post("/api/v1/sessions", headers=user.headers,
                       data={"input": "hi", "mode": "inference", "type": "text"}).json
    turn = chat["interactions"][-1]
    _check(helix.Interaction, turn)
    with pytest.raises(ValidationError):
        _check(helix.Interaction, json.loads(json.dumps({**turn, **change})))
    without = {k: v for k, v in turn.items() if k != "messages"}
    with pytest.raises(ValidationError):
        _check(helix.Interaction, without)
