"""The platform as the bench runs it, started once for all figures: an embedded PostgreSQL and
Valkey in a temporary folder, the control plane served as `make run` serves it, and one runner
through its supervisor (started on first need: the figures that need no model run without it).

Only what the bench must know is set here (its own ports, folders, users, and the sampling that
forces every reply to its full length); every other setting is the code's own default, so a rerun
after a change to the serving code measures that change.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
import requests
from psycopg.rows import dict_row

from bench.paths import REPO, models_dir  # noqa: F401 - models_dir is imported from here too
from controlplane.accounts import store as accounts
from controlplane.devstack.embedded import EmbeddedPostgres, EmbeddedValkey
from controlplane.devstack.stack import control_plane_command
from controlplane.http.serving import APP, gunicorn_command
from controlplane.sessions import store as sessions_store
from controlplane.storage.migrate import apply_migrations
from controlplane.storage.rows import SessionWithInteractions
from controlplane.usage import plans
from controlplane.usage.plans import DEFAULT_PLAN, Limits
from shared.processes import LoggedProcess, free_port, wait_for_port
from shared.runners import runner_environment
from shared.types import Creator, InteractionState

DEFAULT_MODEL = "smollm2-135m-instruct"
# Every reply runs to max_tokens, so both sides of a throughput ratio generate the same tokens.
SAMPLING_EXTRA = {"ignore_eos": True}


def raise_open_file_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit, for this process and the servers it starts (a
    thousand streams are a thousand sockets on each side); returns the limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Server:
    """A gunicorn server the bench started, with its URL."""

    def __init__(self, name: str, port: int, cmd: list[str], env: dict[str, str], logs: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = LoggedProcess(cmd, env, logs / f"{name}.log", cwd=REPO)
        wait_for_port(self.port, 120, self.process.proc)

    def wait_healthy(self, path: str, timeout: float = 60) -> "Server":
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(self.url + path, timeout=5).ok:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}{path} not answering after {timeout}s")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.stop()


class BenchStack:
    def __init__(self, text_model: str = DEFAULT_MODEL, text_model_path: Path | None = None,
                 keep: bool = False):
        self.text_model = text_model
        self.text_model_path = Path(text_model_path or models_dir() / text_model.split("/")[-1])
        self.work = Path(tempfile.mkdtemp(prefix="helix-bench-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.keep = keep
        self.pg: EmbeddedPostgres | None = None
        self.vk: EmbeddedValkey | None = None
        self.servers: list[Server] = []
        self.api: Server | None = None
        self.runner_process: LoggedProcess | None = None
        self.vllm_url = ""
        self.runner_token = ""
        self.env: dict[str, str] = {}

    # -- start and stop -------------------------------------------------------------------------
    def start(self) -> "BenchStack":
        try:
            self.pg = EmbeddedPostgres(self.work / "pg", free_port()).start()
            self.vk = EmbeddedValkey(self.work / "vk", free_port()).start()
            apply_migrations(self.pg.url)
            with self.db() as conn:
                self.runner_token = accounts.create_runner_token(conn, "bench")[1]
            self.env = {**os.environ, "DATABASE_URL": self.pg.url, "REDIS_URL": self.vk.url,
                        "HELIX_FILESTORE": str(self.work / "files"), "HELIX_TEXT_MODELS": self.text_model}
            self.api = self.control_plane("control-plane")
        except BaseException:
            self.stop()  # what did start
            raise
        return self

    def control_plane(self, name: str, workers: int | None = None) -> Server:
        """The control plane under gunicorn, on its own port: as `make run` serves it, or with
        `workers` processes (S1 measures what one process holds)."""
        port = free_port()
        cmd = control_plane_command(port) if workers is None else gunicorn_command(port, workers=workers)
        server = Server(name, port, cmd, self.env, self.logs).wait_healthy("/healthz")
        self.servers.append(server)
        return server

    def bare_server(self, app: str) -> Server:
        """Another WSGI app under the control plane's own command line (worker class, workers,
        threads, options), for a baseline that differs from the platform in the app alone."""
        port = free_port()
        cmd = control_plane_command(port)
        if cmd[-1] != APP:
            raise RuntimeError(f"the control plane's command line no longer ends with its app: {cmd}")
        server = Server("bare-app", port, [*cmd[:-1], app], self.env, self.logs).wait_healthy("/bare")
        self.servers.append(server)
        return server

    def runner(self) -> str:
        """Starts the runner (vLLM on the text model, its workers) once; returns vLLM's URL."""
        if self.runner_process is not None:
            return self.vllm_url
        vllm_port = free_port()
        env = runner_environment(
            self.env, api_url=self.api.url, token=self.runner_token, redis_url=self.vk.url, runner_id="bench",
            text_model=self.text_model, text_model_path=str(self.text_model_path),
            HELIX_VLLM_PORT=str(vllm_port), HELIX_SAMPLING_EXTRA=json.dumps(SAMPLING_EXTRA),
            HELIX_RUNNER_LOG_DIR=str(self.logs), HELIX_RUNNER_WORK_DIR=str(self.work / "runner"),
            HF_HUB_OFFLINE="1")
        self.runner_process = LoggedProcess([sys.executable, "-m", "runner"], env, self.logs / "runner.log", cwd=REPO)
        self.runner_process.wait_for_log("ready:", timeout=900)
        self.vllm_url = f"http://127.0.0.1:{vllm_port}"
        return self.vllm_url

    def stop_runner(self) -> None:
        if self.runner_process is not None:
            self.runner_process.stop()
            self.runner_process, self.vllm_url = None, ""

    def stop(self) -> None:
        self.stop_runner()
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()
        if self.vk:
            self.vk.stop()
        if self.pg:
            self.pg.stop()
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> "BenchStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- data ------------------------------------------------------------------------------------
    @contextmanager
    def db(self) -> Iterator[psycopg.Connection]:
        with psycopg.connect(self.pg.url, row_factory=dict_row, autocommit=True) as conn:
            yield conn

    def users(self, n: int, tag: str = "bench", limits: Limits | None = None) -> list[tuple[str, str]]:
        """n users with an API key each: (user id, key). One user per concurrent client, so the
        per-user limits of the platform measure nothing but themselves. `limits`: a plan the
        users and their keys are put on (each held to it, as a hosted API's customers are)."""
        out = []
        with psycopg.connect(self.pg.url, row_factory=dict_row) as conn:
            plan = None
            if limits is not None:
                plan = f"{tag}-{uuid.uuid4().hex[:8]}"
                plans.set_plan(conn, plan, limits)
            for _ in range(n):
                user = accounts.create_user(conn, f"{tag}-{uuid.uuid4().hex[:12]}@example.com", plan=plan or DEFAULT_PLAN)
                out.append((user["id"], accounts.create_api_key(conn, user["id"], tag, plan=plan)[1]))
        return out

    def text_sessions(self, owners: list[str], model: str, reply: str | None) -> list[SessionWithInteractions]:
        """Chat sessions (one per owner) written straight to PostgreSQL: finished with `reply`, or
        (None) with their reply still waiting, as between a POST and the runner's final update."""
        out = []
        with psycopg.connect(self.pg.url, row_factory=dict_row) as conn:
            for owner in owners:
                session = sessions_store.insert_session(conn, owner=owner, mode="inference", type="text",
                                                        model_name=model, name="bench", config={"text": {}})
                user = sessions_store.insert_interaction(
                    conn, session_id=session.id, creator=Creator.USER, mode="inference",
                    message="Tell me about lighthouses.", state=InteractionState.COMPLETE)
                system = sessions_store.insert_interaction(
                    conn, session_id=session.id, creator=Creator.SYSTEM, mode="inference", message=reply or "",
                    state=InteractionState.COMPLETE if reply is not None else InteractionState.WAITING)
                out.append((session, [user, system]))
        return out
