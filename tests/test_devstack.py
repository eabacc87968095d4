"""`helix up` (what `make run` runs) and the admin CLI, as a user would run them."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import requests

from controlplane.devstack.embedded import free_port
from controlplane.devstack.stack import Child
from tests.conftest import wait_until


def start_up(state_dir, port, pg_port, redis_port):
    env = {**os.environ, "HELIX_STATE_DIR": str(state_dir), "HELIX_PG_PORT": str(pg_port),
           "HELIX_REDIS_PORT": str(redis_port), "HELIX_PORT": str(port), "HELIX_WEB_WORKERS": "1"}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    return subprocess.Popen([sys.executable, "-m", "controlplane.cli", "up", "--no-runner"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_key(proc, state_dir, timeout=90) -> str:
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("API key"):
            key = proc.stdout.readline().strip()
            assert key == (state_dir / "dev-api-key").read_text().strip()
            return key
        assert proc.poll() is None, "".join(lines)
    raise TimeoutError("".join(lines))


def sign_in_as_dev(port: int, password: str) -> requests.Response:
    browser = requests.Session()
    page = browser.get(f"http://127.0.0.1:{port}/sign-in", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return browser.post(f"http://127.0.0.1:{port}/sign-in", allow_redirects=False, timeout=30,
                        data={"email": "dev@helix.local", "password": password, "csrf_token": token})


def test_up_prints_a_working_key_stops_cleanly_and_keeps_data(tmp_path):
    port, pg_port, redis_port = free_port(), free_port(), free_port()
    proc = start_up(tmp_path, port, pg_port, redis_port)
    try:
        key = wait_for_key(proc, tmp_path)
        assert key.startswith("hl-")
        password = (tmp_path / "dev-password").read_text().strip()
        assert sign_in_as_dev(port, password).status_code == 302  # the web app, with the printed password
        headers = {"Authorization": f"Bearer {key}"}
        r = requests.post(f"http://127.0.0.1:{port}/api/v1/sessions", headers=headers,
                          data={"input": "yo", "mode": "inference", "type": "text"})
        assert r.status_code == 201
        session_id = r.json()["id"]
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # postgres, valkey, gunicorn (and its workers)
        # The CLI finds the embedded database through .helix/env.
        out = subprocess.run([sys.executable, "-m", "controlplane.cli", "users", "create", "ops@example.com"],
                             env={**os.environ, "HELIX_STATE_DIR": str(tmp_path)}, capture_output=True,
                             text=True, check=True).stdout
        new_key = out.strip().splitlines()[-1]
        assert new_key.startswith("hl-")
        assert requests.get(f"http://127.0.0.1:{port}/api/v1/sessions",
                            headers={"Authorization": f"Bearer {new_key}"}).status_code == 200
        # Browsers' event streams send the key in the query: it works there, and stays out of the log;
        # any other route refuses a key in the URL.
        with requests.get(f"http://127.0.0.1:{port}/api/v1/sessions/{session_id}/events?access_token={key}",
                          stream=True, timeout=30) as events:
            assert events.status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/api/v1/sessions?access_token={new_key}").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    output = proc.stdout.read()
    assert "GET /api/v1/sessions" in output and new_key not in output and f"access_token={key}" not in output
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    # A second run reuses the data and the same development key.
    proc = start_up(tmp_path, port, pg_port, redis_port)
    try:
        assert wait_for_key(proc, tmp_path) == key
        assert (tmp_path / "dev-password").read_text().strip() == password
        assert sign_in_as_dev(port, password).headers["Location"] == "/sessions"
        r = requests.get(f"http://127.0.0.1:{port}/api/v1/sessions/{session_id}", headers=headers)
        assert r.status_code == 200 and r.json()["interactions"][0]["message"] == "yo"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def test_up_refuses_a_port_in_use_before_touching_anything(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start_up(tmp_path, port, free_port(), free_port())
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert f"port {port} is already in use" in out and "HELIX_PORT" in out
    assert not (tmp_path / "postgres").exists()


def test_a_live_postgres_data_directory_is_never_taken_over(tmp_path):
    from controlplane.devstack.embedded import EmbeddedPostgres

    first = EmbeddedPostgres(tmp_path / "pg", free_port()).start()
    try:
        second = EmbeddedPostgres(tmp_path / "pg", free_port())
        try:
            second.start()
            raise AssertionError("a second server started on a live data directory")
        except RuntimeError as err:
            assert "already running" in str(err)
        assert (tmp_path / "pg" / "postmaster.pid").exists()
    finally:
        first.stop()


def platform_child(up, needle):
    """The live child of `helix up` whose command line holds `needle`, or None."""
    for child in psutil.Process(up.pid).children():
        try:
            if needle in " ".join(child.cmdline()):
                return child
        except psutil.ZombieProcess:  # killed, not yet reaped
            pass
    return None


def healthy(port) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok
    except requests.ConnectionError:
        return False


def test_up_restarts_parts_that_die_and_loses_nothing(tmp_path):
    port = free_port()
    proc = start_up(tmp_path, port, free_port(), free_port())
    try:
        headers = {"Authorization": f"Bearer {wait_for_key(proc, tmp_path)}"}
        up_since = time.monotonic()  # the key is printed once every part has started
        url = f"http://127.0.0.1:{port}/api/v1/sessions"

        def create(text: str) -> int:
            try:
                return requests.post(url, headers=headers, timeout=10,
                                     data={"input": text, "mode": "inference", "type": "text"}).status_code
            except requests.ConnectionError:
                return 0

        first = requests.post(url, headers=headers, data={"input": "a", "mode": "inference", "type": "text"})
        assert first.status_code == 201
        for store in ("valkey", "postgres"):
            platform_child(proc, store).kill()
            # Requests in between get a 503 (or no answer); then the store is back on its data.
            wait_until(lambda: create(store) == 201, 60, f"{store} did not come back", interval=0.5)
        assert requests.get(f"{url}/{first.json()['id']}", headers=headers).status_code == 200

        # The control plane, once it has run a while, is restarted too.
        # (one that dies sooner after its start is not restarted: `helix up` stops instead)
        time.sleep(max(0.0, Child.SETTLED_SECONDS + 1 - (time.monotonic() - up_since)))
        killed = platform_child(proc, "gunicorn")
        orphans = killed.children()  # they answer on their own for a moment, then exit
        killed.kill()
        wait_until(lambda: (platform_child(proc, "gunicorn") or killed).pid != killed.pid and healthy(port)
                   and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in orphans),
                   60, "the control plane did not come back", interval=0.5)
        assert requests.get(f"{url}/{first.json()['id']}", headers=headers).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert "EmbeddedValkey exited" in out and "EmbeddedPostgres exited" in out
    assert "the control plane exited with -9; restarting it" in out
