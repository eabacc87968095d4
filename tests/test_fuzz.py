"""The API fuzzed as a whole: Schemathesis runs every operation of the OpenAPI document against the
live server (gunicorn, real PostgreSQL and Redis, the tiny runner), with examples built from the
schemas, their edges and violations (coverage), random ones (fuzzing) and chains that follow the
document's links (create, read, continue, cancel, delete), and checks that no answer is a server
error and that every answer's status, content type, headers and body are as the document says.

The suite runs a quick profile; `make fuzz` a deep one (HELIX_FUZZ_PROFILE=deep, HELIX_FUZZ_EXAMPLES,
HELIX_FUZZ_SEED). HELIX_FUZZ_DEBUG adds arguments of Schemathesis's own, `{report}` in them standing for the run's name
(`--report har --report-har-path /tmp/{report}.har`, say)."""
from __future__ import annotations

import json
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
DEEP = os.environ.get("HELIX_FUZZ_PROFILE", "quick") == "deep"
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


def _without_examples(document: dict) -> dict:
    """The document with no request examples: what the quick profile's coverage phase reads."""
    for item in document["paths"].values():
        for op in item.values():
            for media in op.get("requestBody", {}).get("content", {}).values():
                media.pop("examples", None)
    return document


def _fuzz(base_url: str, name: str, headers: dict[str, str], *selection: str) -> str:
    """The deep profile runs every phase on the served document. The quick one runs the coverage
    phase on a copy without the request examples: it builds on each example and would send every
    valid variation of a chat as a real generation (about 90 s an operation here, most of it
    replies of the model's default length); the other phases run with them."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    served = f"{base_url}/api/v1/openapi.json"
    if DEEP:
        runs = {name: (served, "examples,coverage,fuzzing,stateful")}
    else:
        copy = REPORTS / f"{name}-without-examples.json"
        copy.write_text(json.dumps(_without_examples(requests.get(served, timeout=30).json())))
        runs = {name: (served, "examples,fuzzing,stateful"), f"{name}-coverage": (str(copy), "coverage")}
    printed = ""
    for report, (document, phases) in runs.items():
        config = REPORTS / f"{report}.toml"
        # The stateful phase's scenarios are cheap (about 15 s for 150 here) and each is a chain
        # that needs a create that succeeded (an example sent as it is, one time in five or so).
        config.write_text(f"[generation]\nmax-examples = {EXAMPLES}\n\n[phases.stateful.generation]\n"
                          f"max-examples = {max(int(EXAMPLES), 150)}\n")
        command = [str(Path(sys.executable).parent / "st"), "--config-file", str(config), "run", document,
                   "--url", base_url, "--checks", ",".join(CHECKS), "--phases", phases,
                   "--generation-with-security-parameters", "false", "--continue-on-failure", "--request-timeout", "60",
                   "--report", "junit,har", "--report-junit-path", str(REPORTS / f"{report}.xml"),
                   "--report-har-path", str(REPORTS / f"{report}.har"), *selection]
        command += os.environ.get("HELIX_FUZZ_DEBUG", "").replace("{report}", report).split()
        if SEED != "random":
            command += ["--seed", SEED]
        for header, value in headers.items():
            command += ["-H", f"{header}: {value}"]
        run = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        (REPORTS / f"{report}.txt").write_text(run.stdout + run.stderr)
        assert run.returncode == 0, f"Schemathesis found failures (test-artifacts/fuzz/{report}.txt):\n" + \
            run.stdout[-6000:]
        for phase in set(phases.split(",")) - {"examples"}:  # the runner routes have none
            assert re.search(rf"✅  {phase.capitalize()} ", run.stdout), (phase, run.stdout[-3000:])
        printed += run.stdout
    return printed


def _done_to_created_sessions(har: Path) -> set[tuple[str, str]]:
    """(method, path below the session) of each request answered on a session the fuzzer had
    created (from its HAR report), with success or a 409 (a cancel after the reply ended, say:
    the tiny model's replies take a fraction of a second)."""
    entries = json.loads(har.read_text())["log"]["entries"]
    created = {json.loads(e["response"]["content"]["text"])["id"] for e in entries
               if e["request"]["method"] == "POST" and e["request"]["url"].split("?")[0].endswith("/api/v1/sessions")
               and e["response"]["status"] == 201}
    done = set()
    for e in entries:
        found = re.search(r"/api/v1/sessions/([0-9a-f-]{36})(/[a-z]+)?(?:$|\?)", e["request"]["url"])
        if found and found.group(1) in created and (e["response"]["status"] < 300 or e["response"]["status"] == 409):
            done.add((e["request"]["method"], found.group(2) or ""))
    return done


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
        printed = _fuzz(live_server, "users", signed_in, "--exclude-path-regex", "^/api/v1/(ws/user|runner/)")
        # The document's examples were sent and answered, and the stateful phase built on what
        # they created: new sessions read, continued, cancelled and deleted through the links.
        assert re.search(r"✅  Examples .*\n\s*\n\s*✅\s+\d+ passed", printed), printed[-3000:]
        done = _done_to_created_sessions(REPORTS / "users.har")
        assert {("GET", ""), ("PUT", ""), ("POST", "/cancel"), ("DELETE", "")} <= done, done
    finally:
        _cancel_everything(live_server, signed_in)


def test_every_runner_operation_answers_as_the_document_says(live_server, services):
    token = _runner_token(services["database_url"])  # a runner of its own: nothing of runner-main's changes
    _fuzz(live_server, "runners", {"Authorization": f"Bearer {token}", WIRE_VERSION_HEADER: str(WIRE_VERSION)},
          "--include-path-regex", "^/api/v1/runner/")
