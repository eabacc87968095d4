"""`helix up` (what `make run` runs) and the admin CLI, as a user would run them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import requests

from controlplane.embedded import free_port


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


def test_up_prints_a_working_key_stops_cleanly_and_keeps_data(tmp_path):
    port, pg_port, redis_port = free_port(), free_port(), free_port()
    proc = start_up(tmp_path, port, pg_port, redis_port)
    try:
        key = wait_for_key(proc, tmp_path)
        assert key.startswith("hl-")
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
        # Browsers' event streams send the key in the query: it works, and stays out of the log.
        assert requests.get(f"http://127.0.0.1:{port}/api/v1/sessions?access_token={new_key}").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    output = proc.stdout.read()
    assert "GET /api/v1/sessions" in output and new_key not in output
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    # A second run reuses the data and the same development key.
    proc = start_up(tmp_path, port, pg_port, redis_port)
    try:
        assert wait_for_key(proc, tmp_path) == key
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
    from controlplane.embedded import EmbeddedPostgres

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


def test_up_brings_back_an_embedded_store_that_dies(tmp_path):
    port = free_port()
    proc = start_up(tmp_path, port, free_port(), free_port())
    try:
        headers = {"Authorization": f"Bearer {wait_for_key(proc, tmp_path)}"}
        url = f"http://127.0.0.1:{port}/api/v1/sessions"
        first = requests.post(url, headers=headers, data={"input": "a", "mode": "inference", "type": "text"})
        assert first.status_code == 201
        for name in ("valkey", "postgres"):
            store = next(c for c in psutil.Process(proc.pid).children() if name in " ".join(c.cmdline()))
            store.kill()
            deadline = time.monotonic() + 60
            while True:  # requests in between may get a 503; then the store is back
                try:
                    r = requests.post(url, headers=headers, data={"input": name, "mode": "inference", "type": "text"},
                                      timeout=10)
                    if r.status_code == 201:
                        break
                    assert r.status_code == 503, r.text
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, f"{name} did not come back"
                time.sleep(0.5)
        # Nothing stored before the crashes was lost.
        assert requests.get(f"{url}/{first.json()['id']}", headers=headers).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert "EmbeddedValkey exited" in out and "EmbeddedPostgres exited" in out
