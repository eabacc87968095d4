"""The API fuzzed as a whole: Schemathesis runs every operation of the OpenAPI document against the
live server (gunicorn, real PostgreSQL and Redis, the tiny runner), with examples built from the
schemas, their edges and violations (coverage), random ones (fuzzing) and chains that follow the
document's links (create, read, continue, cancel, delete), and checks that no answer is a server
error and that every answer's status, content type, headers and body are as the document says.

The suite runs a quick profile; `make fuzz` a deep one (HELIX_FUZZ_EXAMPLES, HELIX_FUZZ_SEED)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from controlplane.accounts import store as accounts
from shared.wire import WIRE_VERSION, WIRE_VERSION_HEADER
from tests.conftest import REPO, _runner_token

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "unsupported_method")
EXAMPLES = os.environ.get("HELIX_FUZZ_EXAMPLES", "8")
SEED = os.environ.get("HELIX_FUZZ_SEED", "1")  # "random": a new seed each run
PASSWORD = "a fuzzer's password"
REPORTS = REPO / "test-artifacts" / "fuzz"


def _signed_in(base_url: str, email: str) -> tuple[str, str]:
    """The sign-in cookie and CSRF token of a browser signed in as `email`: the fuzzer may delete
    every API key of its user (the stateful phase finds their ids) and still be signed in."""
    browser = requests.Session()
    form = browser.get(f"{base_url}/sign-in", timeout=30).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    r = browser.post(f"{base_url}/sign-in", data={"email": email, "password": PASSWORD, "csrf_token": token},
                     allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text[:300]
    page = browser.get(f"{base_url}/sessions", timeout=30).text
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)
    return f"helix_session={browser.cookies['helix_session']}", csrf


def _fuzz(base_url: str, name: str, headers: dict[str, str], *selection: str) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).parent / "st"), "run", f"{base_url}/api/v1/openapi.json",
               "--checks", ",".join(CHECKS), "--max-examples", EXAMPLES,
               "--phases", "examples,coverage,fuzzing,stateful",
               "--generation-with-security-parameters", "false", "--continue-on-failure", "--request-timeout", "60",
               "--report", "junit", "--report-junit-path", str(REPORTS / f"{name}.xml"), *selection]
    if SEED != "random":
        command += ["--seed", SEED]
    for header, value in headers.items():
        command += ["-H", f"{header}: {value}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    (REPORTS / f"{name}.txt").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, f"Schemathesis found failures (test-artifacts/fuzz/{name}.txt):\n" + run.stdout[-6000:]
    assert re.search(r"Coverage .*\n\s*\n\s*✅ \d+ passed", run.stdout), run.stdout[-3000:]


@pytest.fixture()
def fuzz_user(live_db):
    return accounts.create_user(live_db, f"fuzz-{os.urandom(4).hex()}@example.com", password=PASSWORD)


def _cancel_everything(base_url: str, headers: dict[str, str]) -> None:
    """What the fuzzer queued must not keep the shared runner busy for the tests after this one."""
    listed = requests.get(f"{base_url}/api/v1/sessions?limit=1000", headers=headers, timeout=60).json()
    for session in listed["sessions"]:
        r = requests.post(f"{base_url}/api/v1/sessions/{session['id']}/cancel", headers=headers, timeout=60)
        assert r.status_code in (200, 409), r.text


def test_every_user_operation_answers_as_the_document_says(live_server, runner, fuzz_user):
    cookie, csrf = _signed_in(live_server, fuzz_user["email"])
    # The user websocket is not HTTP the fuzzer can speak; the runner routes have their own run.
    signed_in = {"Cookie": cookie, "X-CSRFToken": csrf}
    try:
        _fuzz(live_server, "users", signed_in, "--exclude-path-regex", "^/api/v1/(ws/user|runner/)")
    finally:
        _cancel_everything(live_server, signed_in)


def test_every_runner_operation_answers_as_the_document_says(live_server, services):
    token = _runner_token(services["database_url"])  # a runner of its own: nothing of runner-main's changes
    _fuzz(live_server, "runners", {"Authorization": f"Bearer {token}", WIRE_VERSION_HEADER: str(WIRE_VERSION)},
          "--include-path-regex", "^/api/v1/runner/")
