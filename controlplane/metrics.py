"""Prometheus metrics of the control plane, served at GET /metrics (prometheus_client).

gunicorn runs several worker processes and a scrape reaches one of them, so what is counted as it
happens (requests and their latency by route template and status, reconciler checks by result,
interactions finished, queue waits at scheduling) uses prometheus_client's multiprocess mode: each
process writes its values to files in PROMETHEUS_MULTIPROC_DIR, which gunicorn's master makes fresh
at start (controlplane/http/gunicorn_hooks.py), and a scrape sums them. What is a fact of shared state
(unfinished interactions by state, queue length and oldest wait, runners alive and gone) is read
when scraped: one count on a partial index in PostgreSQL, one small query of the runners, and two
round trips to Redis. A scrape adds nothing to a status poll: a request only bumps two values in a
memory-mapped file. Without PROMETHEUS_MULTIPROC_DIR (an app made in-process, as in the tests) the
values live in the process's default registry.
"""
from __future__ import annotations

import hmac
import logging
import os
import time
from typing import Any

from flask import Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from controlplane.contract.operations import documented
from controlplane.errors import Unauthorized
from controlplane.fleet import fair_share_store
from controlplane.fleet import overview as fleet
from controlplane.fleet import store as fleet_store
from controlplane.http.request_context import route_template
from controlplane.sessions import store as sessions_store
from controlplane.storage import db

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("helix_http_requests_total", "HTTP requests answered, by method, route template and status",
                   ["method", "route", "status"])
LATENCY = Histogram("helix_http_request_duration_seconds",
                    "Time to answer a request (to its first byte for a stream), by method, route template and status",
                    ["method", "route", "status"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RECONCILER = Counter("helix_reconciler_checks_total",
                     "Unfinished interactions the reconciler looked at, by what it did (requeued-*, failed, running, ...)",
                     ["result"])
FINISHED = Counter("helix_interactions_finished_total", "Interactions a runner finished, by final state",
                   ["state"])
STATUS_POLLS = Counter("helix_status_polls_total",
                       "GET /api/v1/sessions/{id} answers, by where they came from (copy: this process's"
                       " session cache, database: PostgreSQL)", ["answered_from"])
POLL_FROM_COPY = STATUS_POLLS.labels("copy")
POLL_FROM_DATABASE = STATUS_POLLS.labels("database")
SCHEDULING_WAIT = Histogram("helix_scheduling_wait_seconds",
                            "Time a job waited in its queue before a runner started it, by queue",
                            ["queue"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))


# The labelled series of each (method, route, status), looked up once: prometheus_client's
# labels() takes a lock and checks every label on each call, which doubled a request's cost here.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_request_series: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def _series(labels: tuple[str, str, str]) -> tuple[Any, Any]:
    found = _request_series.get(labels)
    if found is None:
        found = _request_series[labels] = (REQUESTS.labels(*labels), LATENCY.labels(*labels))
    return found


def _route() -> str:
    return route_template() or "<unmatched>"  # never the raw path: unbounded labels


def count_request(method: str, route: str, status: int, started: float | None) -> None:
    """One answered request in helix_http_requests_total, and its time since `started`
    (time.perf_counter()) in helix_http_request_duration_seconds."""
    count, latency = _series((method if method in _METHODS else "other",  # no series per invented method
                              route, str(status)))
    count.inc()
    if started is not None:
        latency.observe(time.perf_counter() - started)


def count_reconciled(results: dict[str, str]) -> None:
    for result in results.values():
        RECONCILER.labels(result).inc()


def count_finished(state: str) -> None:
    FINISHED.labels(state).inc()


def observe_scheduling(decision: dict[str, Any]) -> None:
    if decision.get("waited_seconds") is not None:
        SCHEDULING_WAIT.labels(decision.get("queue") or "").observe(decision["waited_seconds"])


class FleetCollector:
    """Gauges read from PostgreSQL and Redis when scraped."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self):
        config = self.app.config["HELIX"]
        unfinished = GaugeMetricFamily("helix_interactions_unfinished",
                                       "Unfinished system interactions: queued (no runner yet), running, review"
                                       " (a fine-tune waiting for its user)", labels=["state"])
        runners = GaugeMetricFamily("helix_runners", "Registered runners, alive or gone", labels=["status"])
        try:
            with db.transaction() as conn:
                conn.execute("SET LOCAL statement_timeout = 2000")  # a scrape never holds a connection long
                counts = sessions_store.unfinished_system_counts(conn)
                fleet_runners = fleet_store.runner_counts(conn, config.runner_gone_seconds)
                held = fair_share_store.held_by_queue(conn)
        except Exception as err:
            log.warning("metrics: database unavailable: %s", err)
            counts, fleet_runners, held = None, None, {}
        if counts is not None:
            for state, n in counts.items():
                unfinished.add_metric([state], n)
            yield unfinished
        if fleet_runners is not None:
            for status in ("alive", "gone"):
                runners.add_metric([status], fleet_runners[status])
            yield runners
        labels = ["queue", "kind", "model"]
        length = GaugeMetricFamily("helix_queue_length", "Jobs waiting in a queue", labels=labels)
        wait = GaugeMetricFamily("helix_queue_oldest_wait_seconds",
                                 "How long the job at the head of a queue has waited (0 when empty)", labels=labels)
        held_back = GaugeMetricFamily("helix_queue_held_jobs",
                                      "Jobs held back in PostgreSQL by fair share, by the queue they wait for",
                                      labels=labels)
        try:
            queues = fleet.queues(self.app.extensions["redis"])
        except Exception as err:
            log.warning("metrics: Redis unavailable: %s", err)
            return
        for q in fleet.with_held(queues, held):
            key = [q["name"], q["kind"], q["model"]]
            length.add_metric(key, q["length"])
            wait.add_metric(key, q["oldest_wait_seconds"] or 0)
            held_back.add_metric(key, q["held"])
        yield length
        yield wait
        yield held_back


def _exposition(app: Flask) -> bytes:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)
    else:
        counted = REGISTRY
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(FleetCollector(app))
    return generate_latest(counted) + generate_latest(scraped)


def init_app(app: Flask) -> None:
    """Times every request and serves /metrics; call before any other hook is registered, so a
    request another hook refuses is counted too."""

    @app.before_request
    def _start_timer():
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count(response):
        count_request(request.method, _route(), response.status_code, g.pop("metrics_started", None))
        return response

    @app.get("/metrics")
    @documented("Prometheus metrics (with HELIX_METRICS_TOKEN set, that token as a bearer)", auth="public",
                content="text/plain")
    def prometheus_metrics():
        token = current_app.config["HELIX"].metrics_token
        if token:
            sent = request.headers.get("Authorization", "").partition(" ")[2].strip()
            if not hmac.compare_digest(sent.encode(), token.encode()):
                raise Unauthorized("/metrics takes the HELIX_METRICS_TOKEN: send 'Authorization: Bearer <token>'")
        return Response(_exposition(current_app._get_current_object()), content_type=CONTENT_TYPE_LATEST)
