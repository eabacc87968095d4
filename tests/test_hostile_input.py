"""Every route answers malformed and hostile input with a 4xx JSON error, never a 500, and
nothing half-written is left behind."""
from __future__ import annotations

import io
import json

import pytest

from tests.conftest import hold_job, runner_auth

SESSION = "/api/v1/sessions"
WEIRD_IDS = ["%00", "a%00b", "x" * 5000, "'; DROP TABLE sessions; --", "%ED%A0%80", "..%2F..", "💥"]


def new_turn(client, user):
    s = client.post(SESSION, headers=user.headers, data={"input": "hi", "mode": "inference", "type": "text"}).json
    return s["id"], s["interactions"][-1]["id"]


@pytest.fixture()
def runner_turn(client, user, api_runner_token):
    """A new turn whose job runner 'hostile-tests' runs, and that runner's headers."""
    headers = runner_auth(api_runner_token, "hostile-tests")
    assert client.post("/api/v1/runner/register", headers=headers,
                       json={"runner_id": "hostile-tests", "models": {}}).status_code == 200
    sid, iid = new_turn(client, user)
    hold_job(client.application.config["HELIX"].redis_url, iid, "hostile-tests")
    return sid, iid, headers


def assert_clear_4xx(r):
    assert 400 <= r.status_code < 500, (r.status_code, r.data[:300])
    assert isinstance(r.json, dict) and isinstance(r.json.get("error"), str) and r.json["error"]


@pytest.mark.parametrize("weird", WEIRD_IDS)
def test_weird_session_ids(client, user, weird):
    for method in ("get", "put", "delete"):
        r = getattr(client, method)(f"{SESSION}/{weird}", headers=user.headers, data={"input": "x"})
        assert_clear_4xx(r)
    assert_clear_4xx(client.get(f"{SESSION}/{weird}/events", headers=user.headers))


@pytest.mark.parametrize("query", ["offset=%00", "limit=abc", "offset=1e9999", "limit=-5", "offset=99999999999999",
                                   "limit=%ED%A0%80"])
def test_weird_list_queries(client, user, query):
    assert_clear_4xx(client.get(f"{SESSION}?{query}", headers=user.headers))


@pytest.mark.parametrize("body", [
    '"just a string"', "null", "12", "[]", '{"input": ["a"], "mode": "inference", "type": "text"}',
    '{"input": {"a": 1}, "mode": "inference", "type": "text"}',
    '{"input": "x", "mode": ["inference"], "type": "text"}',
    '{"input": "x", "mode": "inference", "type": "text", "max_tokens": 1e308}',
    '{"input": "x", "mode": "inference", "type": "text", "max_tokens": true}',
    '{"input": "x", "mode": "inference", "type": "image", "seed": 99999999999999999999999}',
    '{"input": "x", "mode": "inference", "type": "text", "model_name": "\\u0000"}',
    '{"input": "\\udc00", "mode": "inference", "type": "text"}',
])
def test_hostile_json_session_bodies(client, user, db, body):
    before = db.execute("SELECT count(*) AS n FROM sessions WHERE owner = %s", (user.id,)).fetchone()["n"]
    r = client.post(SESSION, headers={**user.headers, "Content-Type": "application/json"}, data=body)
    assert_clear_4xx(r)
    after = db.execute("SELECT count(*) AS n FROM sessions WHERE owner = %s", (user.id,)).fetchone()["n"]
    assert after == before


def test_hostile_form_bodies(client, user):
    bad_utf8 = b"input=%FF%FE&mode=inference&type=text"
    r = client.post(SESSION, headers={**user.headers, "Content-Type": "application/x-www-form-urlencoded"},
                    data=bad_utf8)
    # Undecodable bytes become U+FFFD; the prompt is still a prompt.
    assert r.status_code == 201, r.json
    r = client.post(SESSION, headers={**user.headers, "Content-Type": "multipart/form-data; boundary=zzz"},
                    data=b"--zzz\r\nthis is not a part\r\n--zzz--")
    assert_clear_4xx(r)
    r = client.post(SESSION, headers={**user.headers, "Content-Type": "multipart/form-data"}, data=b"garbage")
    assert_clear_4xx(r)
    files = {"mode": "inference", "type": "text", "input": "x", "files": (io.BytesIO(b"data"), "a.txt")}
    assert_clear_4xx(client.post(SESSION, headers=user.headers, data=files, content_type="multipart/form-data"))


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Basic abc", "Bearer hl-\u00e9\u00e9", "Bearer hr-x",
                                    "bearer " + "hl-" + "a" * 10000])
def test_hostile_authorization_headers(client, header):
    assert_clear_4xx(client.get(SESSION, headers={"Authorization": header}))


@pytest.mark.parametrize("body", ['{"name": 5}', '{"name": ["a"]}', '{"name": "\\udc00"}', "[1]", '"x"'])
def test_hostile_api_key_bodies(client, user, body):
    r = client.post("/api/v1/api_keys", headers={**user.headers, "Content-Type": "application/json"}, data=body)
    assert_clear_4xx(r)


@pytest.mark.parametrize("query", ["id=%00", "key=a%00b", "id=" + "x" * 5000])
def test_hostile_api_key_deletes(client, user, query):
    assert_clear_4xx(client.delete(f"/api/v1/api_keys?{query}", headers=user.headers))


@pytest.mark.parametrize("body", [
    "[1]", '"x"', "null", '{"runner_id": {"a": 1}}', '{"runner_id": "r\\u0000"}',
    '{"runner_id": "r", "models": {"text": ["\\u0000"]}, "info": "nope"}', '{"runner_id": "r", "models": []}',
])
def test_hostile_runner_registrations(client, api_runner_token, body):
    r = client.post("/api/v1/runner/register", data=body,
                    headers={**runner_auth(api_runner_token), "Content-Type": "application/json"})
    if r.status_code == 200:  # NUL was stored as U+FFFD; everything else must be refused
        assert "\x00" not in str(r.json)
    else:
        assert_clear_4xx(r)


@pytest.mark.parametrize("body", [
    '{"delta": "\\udc00 lone surrogate"}', '{"message": "a\\u0000b", "metadata": {"k\\u0000": "\\u0000"}}',
    '{"files": ["\\udc00.png"]}', '{"progress": true}', '{"progress": 1.5}', '{"final": "yes", "state": 3}',
])
def test_hostile_runner_updates(client, user, runner_turn, body):
    sid, iid, headers = runner_turn
    r = client.post(f"/api/v1/runner/sessions/{sid}/interactions/{iid}", data=body,
                    headers={**headers, "Content-Type": "application/json"})
    assert r.status_code < 500, r.data[:300]
    if r.status_code != 200:
        assert_clear_4xx(r)
    assert client.get(f"{SESSION}/{sid}", headers=user.headers).status_code == 200


@pytest.mark.parametrize("weird", WEIRD_IDS)
def test_weird_ids_on_runner_routes(client, api_runner_token, weird):
    headers = runner_auth(api_runner_token)
    assert_clear_4xx(client.post(f"/api/v1/runner/sessions/{weird}/interactions/{weird}", headers=headers, json={}))
    assert_clear_4xx(client.get(f"/api/v1/runner/sessions/{weird}/files?path=sessions/{weird}/x", headers=headers))
    r = client.post(f"/api/v1/runner/sessions/{weird}/interactions/{weird}/files", headers=headers,
                    data={"file": (io.BytesIO(b"x"), "a.png")}, content_type="multipart/form-data")
    assert_clear_4xx(r)


@pytest.mark.parametrize("name", ["a" * 239, "文" * 100], ids=["239-bytes", "100-cjk-300-bytes"])
def test_runner_upload_of_a_name_too_long_is_400(client, user, api_runner_token, name):
    sid, iid = new_turn(client, user)
    r = client.post(f"/api/v1/runner/sessions/{sid}/interactions/{iid}/files",
                    headers=runner_auth(api_runner_token),
                    data={"file": (io.BytesIO(b"x"), name)}, content_type="multipart/form-data")
    assert r.status_code == 400 and "bytes" in r.json["error"]  # was a 500 (OSError, errno 36)


def json_routes(client, user, runner_turn) -> list[tuple[str, str, dict]]:
    """Every route that reads a JSON body, with the credentials it asks for."""
    sid, iid, runner = runner_turn
    turn = f"/api/v1/runner/sessions/{sid}/interactions/{iid}"
    return [("post", SESSION, user.headers), ("put", f"{SESSION}/{sid}", user.headers),
            ("post", "/api/v1/api_keys", user.headers),
            ("put", f"{SESSION}/{sid}/finetune/text/conversations/{iid}", user.headers),
            ("post", "/api/v1/runner/register", runner), ("post", turn, runner),
            *(("post", f"{turn}/finetune/{report}", runner) for report in ("document", "chunk", "metrics"))]


@pytest.mark.parametrize("body", ["[" * 990 + "]" * 990, '{"a": ' * 990 + "1" + "}" * 990,
                                  "[" * 100_000 + "]" * 100_000, '{"metadata": ' + "[" * 65 + "]" * 65 + "}"],
                         ids=["990-arrays", "990-objects", "100000-arrays", "66-levels"])
def test_deeply_nested_json_is_400_on_every_json_route(client, user, runner_turn, body):
    for method, url, headers in json_routes(client, user, runner_turn):
        r = getattr(client, method)(url, data=body, headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 400, (url, r.status_code, r.data[:200])  # was a 500 (RecursionError)
        assert "JSON nested too deeply" in r.json["error"], url


def test_json_nested_up_to_the_limit_is_read(client, user, runner_turn):
    sid, iid, headers = runner_turn
    metadata = {"deep": json.loads("[" * 62 + "]" * 62)}  # 64 levels with the body and metadata objects
    r = client.post(f"/api/v1/runner/sessions/{sid}/interactions/{iid}", json={"metadata": metadata},
                    headers=headers)
    assert r.status_code == 200, r.json


def test_a_multipart_field_name_that_is_not_utf8_is_named(client, user):
    body = (b'--zzz\r\nContent-Disposition: form-data; name="mode"\r\n\r\ninference\r\n'
            b'--zzz\r\nContent-Disposition: form-data; name="type"\r\n\r\ntext\r\n'
            b'--zzz\r\nContent-Disposition: form-data; name="in\xffput"\r\n\r\nhi\r\n--zzz--\r\n')
    r = client.post(SESSION, headers={**user.headers, "Content-Type": "multipart/form-data; boundary=zzz"},
                    data=body)
    assert r.status_code == 400  # was "missing 'mode'": the whole form was dropped
    assert "in\ufffdput" in r.json["error"] and "UTF-8" in r.json["error"], r.json
    r = client.post(SESSION, headers={**user.headers, "Content-Type": "application/x-www-form-urlencoded"},
                    data=b"input=\xff&mode=inference&type=text")  # a raw byte, not %FF
    assert r.status_code == 400 and "UTF-8" in r.json["error"], r.json


def test_finetune_document_name_too_long_is_400(client, user):
    """Fine-tune documents are checked like any filestore name (HELIX_MAX_NAME_BYTES)."""
    r = client.post(SESSION, headers=user.headers, content_type="multipart/form-data",
                    data={"mode": "finetune", "type": "text", "files": (io.BytesIO(b"facts"), "文" * 100 + ".txt")})
    assert r.status_code == 400 and "200 bytes" in r.json["error"], r.json


@pytest.mark.parametrize("body, names", [
    ({"messages": "hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": {"content_type": "text", "parts": [1]}}]}, "messages[0].content.parts[0]"),
    ({"messages": [{"role": "user", "content": {"content_type": "image", "parts": ["x"]}}]}, "content_type"),
    ({"messages": [{"role": "user", "content": "hi"}], "session_id": 5}, "session_id"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
])
def test_helix_chat_bodies_name_the_field_to_fix(client, user, db, body, names):
    before = db.execute("SELECT count(*) AS n FROM sessions WHERE owner = %s", (user.id,)).fetchone()["n"]
    r = client.post("/api/v1/sessions/chat", headers=user.headers, json=body)
    assert_clear_4xx(r)
    assert names in r.json["error"], r.json
    after = db.execute("SELECT count(*) AS n FROM sessions WHERE owner = %s", (user.id,)).fetchone()["n"]
    assert after == before
