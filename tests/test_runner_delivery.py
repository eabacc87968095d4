"""What a runner must deliver to the control plane (fine-tune reports, uploads, downloads) is
retried on its HTTP adapter (urllib3's Retry) through a lost answer or a 5xx, and not at all on a
4xx, which is the control plane's answer; every request names the wire version it speaks."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from runner.control_plane.client import ControlPlane, Gone
from shared.wire import WIRE_VERSION, WIRE_VERSION_HEADER, MetricsReport


class ControlPlaneStandIn(ThreadingHTTPServer):
    """Answers each POST with the next status of `script` (then 200), recording what it got."""

    def __init__(self, script: list[int]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script, self.received = list(script), []


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's spelling
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.received.append((dict(self.headers), json.loads(body or b"null")))
        status = self.server.script.pop(0) if self.server.script else 200
        payload = json.dumps({"ok": status == 200} if status == 200 else {"error": "no"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in(request):
    server = ControlPlaneStandIn(request.param)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def client(server) -> ControlPlane:
    return ControlPlane(f"http://127.0.0.1:{server.server_address[1]}", "hr-token", "runner-1")


@pytest.mark.parametrize("stand_in", [[503, 502]], indirect=True)
def test_a_report_is_delivered_through_server_errors(stand_in):
    report = MetricsReport(points=[{"step": 1, "loss": 0.5}])
    assert client(stand_in).report("s", "i", "metrics", report) == {"ok": True}
    assert len(stand_in.received) == 3
    headers, body = stand_in.received[-1]
    assert body == {"points": [{"step": 1, "loss": 0.5}]}  # only what was set: the control plane has the defaults
    assert headers[WIRE_VERSION_HEADER] == str(WIRE_VERSION) and headers["Authorization"] == "Bearer hr-token"


@pytest.mark.parametrize("stand_in", [[400]], indirect=True)
def test_a_refused_report_is_not_sent_again(stand_in):
    with pytest.raises(requests.HTTPError) as refused:
        client(stand_in).report("s", "i", "metrics", MetricsReport(points=[]))
    assert getattr(refused.value.response, "status_code", None) == 400 and len(stand_in.received) == 1


@pytest.mark.parametrize("stand_in", [[409]], indirect=True)
def test_a_report_on_a_finished_interaction_stops_the_work(stand_in):
    with pytest.raises(Gone):
        client(stand_in).report("s", "i", "metrics", MetricsReport(points=[]))
    assert len(stand_in.received) == 1


@pytest.mark.parametrize("stand_in", [[503] * 10], indirect=True)
def test_delivery_gives_up_after_five_tries(stand_in):
    with pytest.raises(requests.HTTPError) as failed:
        client(stand_in).report("s", "i", "metrics", MetricsReport(points=[]))
    assert getattr(failed.value.response, "status_code", None) == 503 and len(stand_in.received) == 5


@pytest.mark.parametrize("stand_in", [[]], indirect=True)
def test_a_diverged_loss_travels_as_null(stand_in):
    """NaN is not JSON (nor storable in PostgreSQL's jsonb): a diverged run still reports its steps."""
    client(stand_in).report("s", "i", "metrics", MetricsReport(points=[{"step": 3, "loss": float("nan")}]))
    assert stand_in.received[0][1] == {"points": [{"step": 3, "loss": None}]}
    assert MetricsReport.model_validate(stand_in.received[0][1]).points[0]["loss"] is None
