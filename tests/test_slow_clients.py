"""Slow and idle clients cannot freeze the control plane (gunicorn, as `make run` serves it).

Hundreds of connections that send a request line and stop, or promise a body and never send
it, once took every server thread; now each costs a greenlet, a request's headers must arrive
within a few seconds, and a client that stalls is dropped."""
from __future__ import annotations

import socket
import time

import pytest
import requests

from controlplane.http.serving import HEADER_SECONDS
from tests.conftest import start_control_plane

IDLE_SECONDS = HEADER_SECONDS + 1


@pytest.fixture(scope="module")
def server(services, tmp_path_factory):
    """One gunicorn worker process: the easiest to starve."""
    url, proc = start_control_plane(services, tmp_path_factory.mktemp("slow-clients"),
                                    HELIX_CLIENT_IDLE_SECONDS=str(IDLE_SECONDS))
    yield int(url.rsplit(":", 1)[1]), proc
    proc.stop()


def slow_client(port: int, payload: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(payload)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        while sock.recv(65536):
            pass  # an error answer, then the close
        return True
    except socket.timeout:
        return False
    except OSError:
        return True


def test_hundreds_of_stalled_clients_leave_the_api_answering(server, make_live_user):
    server, proc = server
    user = make_live_user()
    base = f"http://127.0.0.1:{server}"
    session = requests.post(f"{base}/api/v1/sessions", headers=user.headers, timeout=10,
                            data={"input": "hi", "mode": "inference", "type": "text"}).json()
    request_line_only = [slow_client(server, b"GET /healthz HTTP/1.1\r\n") for _ in range(200)]
    body_never_sent = [slow_client(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
                       for _ in range(150)]
    # A request the app reads the body of (a session's form), whose body stops half-way.
    head = (f"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user.key}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\nmode=inf").encode()
    body_never_sent += [slow_client(server, head) for _ in range(50)]
    try:
        slowest = 0.0
        for _ in range(20):
            for url in (f"{base}/healthz", f"{base}/api/v1/sessions/{session['id']}"):
                started = time.monotonic()
                r = requests.get(url, headers=user.headers, timeout=5)
                slowest = max(slowest, time.monotonic() - started)
                assert r.status_code == 200, r.text
        assert slowest < 1.0, f"a request took {slowest:.2f}s while 400 clients stalled"

        time.sleep(max(HEADER_SECONDS, IDLE_SECONDS) + 1)
        assert all(closed_by_server(s) for s in request_line_only), "headers never finished, yet still open"
        assert all(closed_by_server(s) for s in body_never_sent), "a body never came, yet still open"
    finally:
        for s in request_line_only + body_never_sent:
            s.close()
    assert "Traceback" not in proc.log(), "a stalled client is not an error of the server's"
