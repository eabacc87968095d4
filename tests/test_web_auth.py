"""The web app's sign-in, cookie and CSRF rules, on the in-process app: a browser's cookie works
on the JSON API only with the page's CSRF token for changes, API keys work exactly as before
without one, and every page error is an HTML page (API errors stay JSON)."""
from __future__ import annotations

import re
import subprocess
import sys
import uuid

import pytest

from controlplane.accounts import store as accounts
from tests.conftest import REPO, app_with

PASSWORD = "correct horse battery"


@pytest.fixture()
def member(db):
    """A user with a password and an API key."""
    row = accounts.create_user(db, f"web-{uuid.uuid4().hex[:10]}@example.com", password=PASSWORD)
    _, key = accounts.create_api_key(db, row["id"], "test")
    return row, key


def _token(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, email: str, password: str = PASSWORD):
    page = client.get("/sign-in")
    assert page.status_code == 200 and "text/html" in page.content_type
    return client.post("/sign-in", data={"email": email, "password": password, "csrf_token": _token(page.text),
                                         "next": "/account"})


def test_sign_in_sets_a_secure_httponly_samesite_cookie_and_opens_the_pages(app, member):
    client = app.test_client()
    assert client.get("/sessions").headers["Location"].startswith("/sign-in?next=")
    r = sign_in(client, member[0]["email"])
    assert r.status_code == 302 and r.headers["Location"] == "/account"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # plain http here
    page = client.get("/account")
    assert page.status_code == 200 and member[0]["email"] in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    over_https = app.test_client()
    page = over_https.get("/sign-in", base_url="https://localhost")
    r = over_https.post("/sign-in", base_url="https://localhost", headers={"Referer": "https://localhost/sign-in"},
                        data={"email": member[0]["email"], "password": PASSWORD, "csrf_token": _token(page.text)})
    assert r.status_code == 302 and "Secure" in r.headers["Set-Cookie"]


def test_a_wrong_password_or_unknown_email_is_one_answer(app, member):
    client = app.test_client()
    wrong = sign_in(client, member[0]["email"], "not the password")
    unknown = sign_in(client, "nobody@example.com")
    for r in (wrong, unknown):
        assert r.status_code == 401 and "do not match an account" in r.text
    assert client.get("/sessions").status_code == 302  # still signed out


def test_the_cookie_reaches_the_api_and_changes_need_the_csrf_token(app, member):
    client = app.test_client()
    sign_in(client, member[0]["email"])
    assert client.get("/api/v1/api_keys").status_code == 200  # reading needs no token
    refused = client.post("/api/v1/api_keys", json={"name": "no token"})
    assert refused.status_code == 403 and "CSRF" in refused.json["error"]
    wrong = client.post("/api/v1/api_keys", json={"name": "bad"}, headers={"X-CSRFToken": "forged"})
    assert wrong.status_code == 403
    token = _token(client.get("/account").text)
    made = client.post("/api/v1/api_keys", json={"name": "from the page"}, headers={"X-CSRFToken": token})
    assert made.status_code == 201 and made.json["key"].startswith("hl-")
    rename = f"/api/v1/api_keys?id={made.json['id']}"
    assert client.patch(rename, json={"name": "renamed"}).status_code == 403
    assert client.patch(rename, json={"name": " "}, headers={"X-CSRFToken": token}).status_code == 400
    assert client.patch(rename, json={"name": "renamed"}, headers={"X-CSRFToken": token}).json["name"] == "renamed"
    assert client.patch("/api/v1/api_keys?id=nope", json={"name": "x"}, headers={"X-CSRFToken": token}).status_code == 404
    # A form post without its token is refused with a page, not JSON.
    page = client.post("/sign-out")
    assert page.status_code == 403 and "text/html" in page.content_type and "CSRF" in page.text
    assert client.get("/account").status_code == 200  # so still signed in


def test_api_keys_work_exactly_as_before_and_need_no_csrf_token(app, member):
    client = app.test_client()
    headers = {"Authorization": f"Bearer {member[1]}"}
    r = client.post("/api/v1/api_keys", json={"name": "script"}, headers=headers)
    assert r.status_code == 201 and "Set-Cookie" not in r.headers
    r = client.post("/api/v1/sessions", headers=headers, data={"mode": "inference", "type": "text", "input": "hi"})
    assert r.status_code == 201, r.text
    assert client.get("/api/v1/sessions").json == {"error": "missing API key: send 'Authorization: Bearer <key>'"}
    # A bad key is refused even from a signed-in browser: a key sent is the only thing judged.
    sign_in(client, member[0]["email"])
    assert client.get("/api/v1/sessions", headers={"Authorization": "Bearer hl-nope"}).status_code == 401


def test_sign_out_ends_the_sign_in_everywhere(app, member):
    client = app.test_client()
    sign_in(client, member[0]["email"])
    stolen = client.get_cookie("helix_session").value
    token = _token(client.get("/account").text)
    assert client.post("/sign-out", data={"csrf_token": token}).status_code == 302
    assert client.get("/account").status_code == 302
    replay = app.test_client()
    replay.set_cookie("helix_session", stolen)
    assert replay.get("/account").status_code == 302
    assert replay.get("/api/v1/sessions").status_code == 401


def test_a_user_deletes_their_account_with_their_password(app, member, db):
    client = app.test_client()
    sign_in(client, member[0]["email"])
    made = client.post("/api/v1/sessions", headers={"Authorization": f"Bearer {member[1]}"},
                       data={"input": "hello", "mode": "inference", "type": "text"})
    assert made.status_code == 201, made.text
    page = client.get("/account")
    assert "Delete my account" in page.text
    wrong = client.post("/account/delete", data={"password": "not it at all", "csrf_token": _token(page.text)})
    assert wrong.status_code == 401 and "not your password" in wrong.text
    assert client.post("/account/delete", data={"password": PASSWORD}).status_code == 403  # no CSRF token
    assert db.execute("SELECT 1 FROM users WHERE id = %s", (member[0]["id"],)).fetchone()

    done = client.post("/account/delete", data={"password": PASSWORD, "csrf_token": _token(page.text)})
    assert done.status_code == 200 and "Your account was deleted" in done.text
    assert "<li>sessions: 1</li>" in done.text and "<li>API keys: 1</li>" in done.text
    assert db.execute("SELECT 1 FROM users WHERE id = %s", (member[0]["id"],)).fetchone() is None
    assert db.execute("SELECT 1 FROM sessions WHERE id = %s", (made.json["id"],)).fetchone() is None
    assert client.get("/account").status_code == 302  # signed out
    assert client.get("/api/v1/sessions", headers={"Authorization": f"Bearer {member[1]}"}).status_code == 401


def test_another_users_session_is_a_404_page(app, member, db, make_user):
    other = make_user()
    client = app.test_client()
    r = client.post("/api/v1/sessions", headers=other.headers, data={"mode": "inference", "type": "text", "input": "x"})
    sign_in(client, member[0]["email"])
    page = client.get(f"/sessions/{r.json['id']}")
    assert page.status_code == 404 and "text/html" in page.content_type and "no session of yours" in page.text
    assert client.get(f"/api/v1/sessions/{r.json['id']}").status_code == 404
    assert client.get(f"/api/v1/filestore/viewer/sessions/{r.json['id']}/x.png").status_code == 404


def test_errors_are_pages_for_pages_and_json_for_the_api(app, member):
    client = app.test_client()
    page = client.get("/no/such/page")
    assert page.status_code == 404 and page.content_type.startswith("text/html")
    assert "There is no page at this address." in page.text
    api = client.get("/api/v1/no-such-route")
    assert api.status_code == 404 and api.json == {"error": "no such route"}
    sign_in(client, member[0]["email"])
    bad = client.get("/sessions?page=zero")
    assert bad.status_code == 400 and "text/html" in bad.content_type and "whole number" in bad.text
    # What a user typed comes back escaped.
    r = client.get("/sessions?q=%3Cscript%3Ealert(1)%3C/script%3E")
    assert r.status_code == 200 and "<script>alert(1)" not in r.text and "&lt;script&gt;alert(1)" in r.text


def test_session_search_and_paging(app, member):
    client = app.test_client()
    headers = {"Authorization": f"Bearer {member[1]}"}
    for n in range(23):
        client.post("/api/v1/sessions", headers=headers,
                    data={"mode": "inference", "type": "text", "input": f"{'zebra' if n % 2 else 'otter'} {n}"})
    found = client.get("/api/v1/sessions?q=ZEBRA&limit=100", headers=headers).json
    assert found["total_count"] == 11 and all("zebra" in s["name"] for s in found["sessions"])
    assert client.get("/api/v1/sessions?q=100%25", headers=headers).json["total_count"] == 0  # % is literal
    sign_in(client, member[0]["email"])
    first = client.get("/sessions")
    assert first.status_code == 200 and "Page 1 of 2" in first.text and "23 sessions" in first.text
    second = client.get("/sessions?page=2")
    assert second.text.count('class="meta"') == 3
    assert "otter" not in client.get("/sessions?q=zebra").text


def test_sign_up_only_when_the_operator_opens_it(app, config, tmp_path_factory):
    closed = app.test_client().get("/sign-up")
    assert closed.status_code == 403 and "Sign-up is closed" in closed.text
    open_app = app_with(config, tmp_path_factory, allow_sign_up=True)
    client = open_app.test_client()
    token = _token(client.get("/sign-up").text)
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    short = client.post("/sign-up", data={"email": email, "password": "short", "confirm": "short", "csrf_token": token})
    assert short.status_code == 400 and "at least 8" in short.text
    r = client.post("/sign-up", data={"email": email, "password": PASSWORD, "confirm": PASSWORD, "csrf_token": token})
    assert r.status_code == 302 and client.get("/account").status_code == 200
    again = open_app.test_client()
    token = _token(again.get("/sign-up").text)
    dup = again.post("/sign-up", data={"email": email, "password": PASSWORD, "confirm": PASSWORD, "csrf_token": token})
    assert dup.status_code == 400 and "exists already" in dup.text


def test_next_never_leaves_the_site(app, member):
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        client = app.test_client()
        page = client.get("/sign-in")
        r = client.post("/sign-in", data={"email": member[0]["email"], "password": PASSWORD,
                                          "csrf_token": _token(page.text), "next": target})
        assert r.headers["Location"] == "/sessions", target


def test_cli_creates_a_user_with_a_password(config, db):
    email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
    env = {"DATABASE_URL": config.database_url, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "controlplane.cli", "users", "create", email, "--password", PASSWORD],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith("hl-")
    assert accounts.user_for_password(db, email, PASSWORD)["email"] == email
    assert accounts.user_for_password(db, email, "wrong password") is None
    out = subprocess.run([sys.executable, "-m", "controlplane.cli", "users", "password", email, "--password", "-"],
                         cwd=REPO, env=env, input="another password\n", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert accounts.user_for_password(db, email, "another password") is not None
    short = subprocess.run([sys.executable, "-m", "controlplane.cli", "users", "create", "x@example.com",
                            "--password", "short"], cwd=REPO, env=env, capture_output=True, text=True)
    assert short.returncode != 0 and "at least 8" in short.stderr


def test_the_admin_page_is_for_admins_only(app, member, db):
    client = app.test_client()
    sign_in(client, member[0]["email"])
    refused = client.get("/admin")
    assert refused.status_code == 403 and "for administrators" in refused.text
    assert 'href="/admin"' not in client.get("/sessions").text
    admin = accounts.create_user(db, f"admin-{uuid.uuid4().hex[:8]}@example.com", is_admin=True, password=PASSWORD)
    client = app.test_client()
    sign_in(client, admin["email"])
    page = client.get("/admin")
    assert page.status_code == 200 and "Recent scheduling decisions" in page.text
    assert 'href="/admin"' in page.text
    assert client.get("/api/v1/dashboard").status_code == 200  # what the page's script reads, by cookie


def _browser_at(app, address: str):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def test_password_guessing_is_slowed_without_locking_the_user_out(config, tmp_path_factory, db):
    """Failures count per email and address (2 here), per address (10) and per email (20); a
    browser that signed in as the email before passes the per-email count."""
    app = app_with(config, tmp_path_factory, max_failed_sign_ins=2)
    email = accounts.create_user(db, f"guessed-{uuid.uuid4().hex[:8]}@example.com", password=PASSWORD)["email"]
    known = _browser_at(app, "10.9.0.1")
    assert sign_in(known, email).status_code == 302  # signed in before: this browser is known
    assert known.post("/sign-out", data={"csrf_token": _token(known.get("/account").text)}).status_code == 302
    assert known.get_cookie("helix_known") is not None  # signing out forgets the sign-in, not the browser
    attacker = _browser_at(app, "10.9.0.2")
    for _ in range(2):
        assert sign_in(attacker, email.upper(), "a wrong guess").status_code == 401
    refused = sign_in(attacker, email)  # even the right password, from there, for a while
    assert refused.status_code == 429 and "Too many failed sign-ins for this email from here" in refused.text
    assert sign_in(_browser_at(app, "10.9.0.3"), email).status_code == 302  # the user elsewhere is not

    # One address trying many emails is stopped for every email.
    for n in range(8):
        sign_in(attacker, f"someone-{n}-{uuid.uuid4().hex[:6]}@example.com", "a wrong guess")
    stopped = sign_in(attacker, f"another-{uuid.uuid4().hex[:6]}@example.com", "a guess")
    assert stopped.status_code == 429 and "Too many failed sign-ins from here" in stopped.text

    # Many addresses guessing one email: a new browser is slowed, the user's own is not.
    for n in range(20):
        sign_in(_browser_at(app, f"10.8.{n}.1"), email, "a wrong guess")
    stranger = sign_in(_browser_at(app, "10.9.0.4"), email)
    assert stranger.status_code == 429 and "for this email from anywhere" in stranger.text
    assert sign_in(known, email).status_code == 302


def test_a_form_field_whose_name_cannot_be_read_is_a_400_before_the_token_check(app, member):
    """Found by the fuzzer: a multipart part named `"ab\\"` has no name Werkzeug can read, and the
    CSRF check, which looks at every field's name, failed on it with a 500."""
    client = app.test_client()
    sign_in(client, member[0]["email"])
    token = _token(client.get("/account").text)
    body = (b'--zzz\r\nContent-Disposition: form-data; name="ab\\"\r\n\r\n{}\r\n'
            b'--zzz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--zzz--\r\n')
    for path in ("/v1/files", "/api/v1/sessions"):
        r = client.post(path, data=body, headers={"X-CSRFToken": token,
                                                  "Content-Type": "multipart/form-data; boundary=zzz"})
        assert r.status_code == 400 and "name could not be read" in r.get_data(as_text=True), (path, r.data[:300])
    # With an API key there is no token check: the route refuses the form as it would any other.
    r = app.test_client().post("/v1/files", data=body, headers={"Authorization": f"Bearer {member[1]}",
                                                                "Content-Type": "multipart/form-data; boundary=zzz"})
    assert 400 <= r.status_code < 500, r.data[:300]
