"""Raw HTTP on a socket to the control plane under gunicorn, as `make run` serves it: requests no
well-behaved client sends are answered like every other error of the API, JSON `{"error": ...}`
with a 4xx status, never a 500 and never an HTML page, whether Flask or gunicorn answers."""
from __future__ import annotations

import json
import socket
from urllib.parse import urlparse

import pytest

LIMIT = 2 * 1024 * 1024  # HELIX_MAX_UPLOAD_BYTES of the live server
BOUNDARY = b"zzz"


def exchange(base_url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends raw bytes, reads one response: its status, headers (lower-case names) and body."""
    url = urlparse(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before reading everything: read its answer
        reader = sock.makefile("rb")
        status = reader.readline()
        headers = {}
        while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = reader.read(int(headers.get("content-length", "0")))
    assert status.startswith(b"HTTP/1.1 "), status
    return int(status.split()[1]), headers, body


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: int | None = None) -> str:
    assert 400 <= status < 500 if expected is None else status == expected, (status, body[:300])
    assert headers["content-type"] == "application/json", (headers, body[:300])
    error = json.loads(body)["error"]
    assert isinstance(error, str) and error
    return error


def post(path: str, headers: dict[str, str], body: bytes, framing: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: localhost", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items()), framing]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def chunked(body: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                    for i in range(0, len(body), 65536)) + b"0\r\n\r\n"


def multipart_of_size(size: int) -> bytes:
    """A multipart body of exactly `size` bytes: one file in the field 'files'."""
    head = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="files"; filename="exact.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    tail = b"\r\n--" + BOUNDARY + b"--\r\n"
    return head + b"x" * (size - len(head) - len(tail)) + tail


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}"}


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "application/json",
                                          "multipart/form-data; boundary=zzz"])
def test_malformed_chunked_body_is_400(live_server, live_user, content_type):
    headers = {"Authorization": f"Bearer {live_user.key}", "Content-Type": content_type}
    request = post("/api/v1/sessions", headers, b"ZZ\r\nabc\r\n0\r\n\r\n", "Transfer-Encoding: chunked")
    error = assert_json_error(*exchange(live_server, request), expected=400)  # was a 500
    assert "chunk" in error


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: a\r\n" % i for i in range(500)) + b"\r\n", 431),
    (b"GET /healthz?" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GARBAGE\r\n\r\n", 400),
    (b"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
], ids=["header-over-8KB", "500-headers", "url-over-4KB", "bad-request-line", "content-length-minus-1"])
def test_gunicorns_own_refusals_are_json(live_server, request_bytes, status):
    assert_json_error(*exchange(live_server, request_bytes), expected=status)  # were HTML pages


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_of_exactly_the_limit_is_accepted(live_server, live_user, framing):
    body = multipart_of_size(LIMIT)
    headers = {"Authorization": f"Bearer {live_user.key}", **MULTIPART}
    frame = f"Content-Length: {len(body)}" if framing == "content-length" else "Transfer-Encoding: chunked"
    status, _, answer = exchange(live_server, post(f"/api/v1/filestore/upload?path={framing}", headers,
                                                   body if framing == "content-length" else chunked(body), frame))
    assert status == 201, answer[:300]  # was a 413
    assert json.loads(answer)[0]["size"] == len(body) - len(multipart_of_size(0))


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_one_byte_over_the_limit_is_413(live_server, live_user, framing):
    body = multipart_of_size(LIMIT + 1)
    headers = {"Authorization": f"Bearer {live_user.key}", **MULTIPART}
    frame = f"Content-Length: {len(body)}" if framing == "content-length" else "Transfer-Encoding: chunked"
    request = post(f"/api/v1/filestore/upload?path=over-{framing}", headers,
                   body if framing == "content-length" else chunked(body), frame)
    assert_json_error(*exchange(live_server, request), expected=413)


def test_a_chunked_json_body_over_the_limit_is_413_not_cut_short(live_server, live_user):
    """werkzeug read such a body up to the limit and parsed what it had read."""
    body = json.dumps({"name": "k" * LIMIT}).encode()
    headers = {"Authorization": f"Bearer {live_user.key}", "Content-Type": "application/json"}
    request = post("/api/v1/api_keys", headers, chunked(body), "Transfer-Encoding: chunked")
    assert_json_error(*exchange(live_server, request), expected=413)


def test_deeply_nested_json_is_400(live_server, live_user):
    headers = {"Authorization": f"Bearer {live_user.key}", "Content-Type": "application/json"}
    body = b"[" * 100_000 + b"]" * 100_000
    request = post("/api/v1/sessions", headers, body, f"Content-Length: {len(body)}")
    assert "JSON nested too deeply" in assert_json_error(*exchange(live_server, request), expected=400)
