"""`helix up` (what `make run` runs): the whole platform on one machine, nothing installed by hand.

Starts an embedded PostgreSQL and Valkey on fixed loopback ports (unless DATABASE_URL and
REDIS_URL name servers to use), applies migrations, makes a development admin and API key,
runs the control plane under gunicorn and one CPU runner. State lives under .helix/; a second
run reuses it. Ctrl-C or SIGTERM stops every process started here.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import psycopg
from psycopg.rows import dict_row

from controlplane.accounts import store as accounts
from controlplane.config import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL
from controlplane.devstack.embedded import EmbeddedPostgres, EmbeddedValkey
from controlplane.http.serving import ACCESS_LOG_FORMAT, gunicorn_command
from controlplane.storage.migrate import apply_migrations
from shared.processes import die_with_parent, port_in_use, stop, wait_for_port
from shared.runners import runner_environment
from shared.settings import env_int

DEV_EMAIL = "dev@helix.local"


def _dev_secret(conn, path: Path, valid, create) -> str:
    """Reuse the secret saved by an earlier run while the database still accepts it."""
    if path.exists():
        saved = path.read_text().strip()
        if valid(conn, saved):
            return saved
    secret = create(conn)
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret


def prepare_database(database_url: str, state_dir: Path) -> tuple[str, str]:
    """Migrations, the development admin with an API key, and a runner token."""
    apply_migrations(database_url)
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        user = accounts.get_user_by_email(conn, DEV_EMAIL) or accounts.create_user(conn, DEV_EMAIL, is_admin=True)
        api_key = _dev_secret(
            conn, state_dir / "dev-api-key",
            lambda c, k: (u := accounts.user_for_api_key(c, k)) is not None and u["id"] == user["id"],
            lambda c: accounts.create_api_key(c, user["id"], "development")[1])
        runner_token = _dev_secret(
            conn, state_dir / "runner-token",
            lambda c, t: accounts.runner_token_row(c, t) is not None,
            lambda c: accounts.create_runner_token(c, "local runner")[1])
        _dev_secret(conn, state_dir / "dev-password",
                    lambda c, p: accounts.user_for_password(c, DEV_EMAIL, p) is not None,
                    lambda c: _new_dev_password(c, user["id"]))
    return api_key, runner_token


def _new_dev_password(conn, user_id: str) -> str:
    """The development admin's web-app password: random, saved in .helix/dev-password (0600)."""
    import secrets

    password = secrets.token_urlsafe(12)
    accounts.set_password(conn, user_id, password)
    return password


def control_plane_command(port: int, extra: Sequence[str] = ()) -> list[str]:
    """The control plane as `make run` serves it (HELIX_WEB_WORKERS gunicorn workers, default 2);
    the bench serves it the same way."""
    return gunicorn_command(port, workers=env_int(os.environ, "HELIX_WEB_WORKERS", 2), extra=extra)


class Child:
    """A platform process of `helix up`, restarted when it dies after running a while. One that
    dies right after starting, or keeps dying, has a problem a restart will not fix: then
    `helix up` stops and says so."""

    SETTLED_SECONDS = 10
    MAX_RESTARTS = 5

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]):
        self.name, self.cmd, self.env = name, cmd, env
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.restarts = -1

    def start(self) -> "Child":
        self.proc = subprocess.Popen(self.cmd, env=self.env, preexec_fn=die_with_parent())
        self.started = time.monotonic()
        self.restarts += 1
        return self

    def restart_if_dead(self) -> None:
        if self.proc.poll() is None:
            return
        code = self.proc.returncode
        if time.monotonic() - self.started < self.SETTLED_SECONDS or self.restarts >= self.MAX_RESTARTS:
            raise SystemExit(f"the {self.name} exited with {code} (restarted {self.restarts} times);"
                             " stopping: see its output above")
        print(f"the {self.name} exited with {code}; restarting it", file=sys.stderr, flush=True)
        self.start()


def run_stack(state_dir: Path, port: int, with_runner: bool = True) -> None:
    state_dir = state_dir.absolute()
    state_dir.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    services = []

    def shutdown(*_):
        raise KeyboardInterrupt

    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    pg_port = env_int(os.environ, "HELIX_PG_PORT", 25432)
    redis_port = env_int(os.environ, "HELIX_REDIS_PORT", 26379)
    needed = {"HELIX_PORT": port, **({} if database_url else {"HELIX_PG_PORT": pg_port}),
              **({} if redis_url else {"HELIX_REDIS_PORT": redis_port})}
    for variable, taken in needed.items():
        if port_in_use(taken):
            raise SystemExit(f"port {taken} is already in use (another `make run`?): stop that, "
                             f"or choose another port with {variable}=...")

    # Both, explicitly: a shell that starts `make run &` without job control leaves SIGINT ignored.
    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    try:
        if not database_url:
            pg = EmbeddedPostgres(state_dir / "postgres", pg_port).start()
            services.append(pg)
            database_url = pg.url
        if not redis_url:
            vk = EmbeddedValkey(state_dir / "valkey", redis_port).start()
            services.append(vk)
            redis_url = vk.url
        api_key, runner_token = prepare_database(database_url, state_dir)
        (state_dir / "env").write_text(f"DATABASE_URL={database_url}\nREDIS_URL={redis_url}\n")

        models = state_dir / "models"
        text_model = os.environ.get("HELIX_TEXT_MODEL", DEFAULT_TEXT_MODEL)
        image_model = os.environ.get("HELIX_IMAGE_MODEL", DEFAULT_IMAGE_MODEL)
        # Sessions that name no model go to the one this runner serves.
        # Logs for a person at a terminal: plain text unless HELIX_LOG_FORMAT says json.
        env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
               "HELIX_LOG_FORMAT": os.environ.get("HELIX_LOG_FORMAT", "text"),
               "HELIX_TEXT_MODELS": os.environ.get("HELIX_TEXT_MODELS", text_model),
               "HELIX_IMAGE_MODELS": os.environ.get("HELIX_IMAGE_MODELS", image_model)}
        children.append(Child("control plane", control_plane_command(
            port, extra=["--access-logfile", "-", "--access-logformat", ACCESS_LOG_FORMAT]), env).start())
        wait_for_port(port, 60, children[-1].proc)
        api_url = f"http://127.0.0.1:{port}"

        if with_runner:
            children.append(Child("runner", [sys.executable, "-m", "runner"], runner_environment(
                env, api_url=api_url, token=runner_token, redis_url=redis_url,
                runner_id=os.environ.get("HELIX_RUNNER_ID", "local-runner"),
                text_model=text_model, text_model_path=os.environ.get("HELIX_TEXT_MODEL_PATH", str(models / text_model.split("/")[-1])),
                image_model=image_model,
                image_model_path=os.environ.get("HELIX_IMAGE_MODEL_PATH", str(models / image_model.split("/")[-1])),
                HELIX_RUNNER_LOG_DIR=os.environ.get("HELIX_RUNNER_LOG_DIR", str(state_dir / "logs")),
                # Adapters, training folders: this installation's own, never another checkout's.
                HELIX_RUNNER_WORK_DIR=os.environ.get("HELIX_RUNNER_WORK_DIR", str(state_dir / "runner-work"))),
            ).start())

        print(f"\nHelix is up at {api_url}\nWeb app: {api_url}/ — sign in as {DEV_EMAIL} with the password"
              f" {(state_dir / 'dev-password').read_text().strip()} (also in {state_dir / 'dev-password'})\nAPI key (also in {state_dir / 'dev-api-key'}):\n{api_key}\n"
              f"Try: curl {api_url}/api/v1/sessions -H 'Authorization: Bearer {api_key}'"
              f" -d \"input=yo&mode=inference&type=text\"\n", flush=True)
        while True:
            time.sleep(0.5)
            for service in services:  # the embedded stores come back on their own data
                if service.proc.poll() is not None:
                    print(f"{type(service).__name__} exited with {service.proc.returncode}; restarting it",
                          file=sys.stderr, flush=True)
                    service.start()
            for child in children:
                child.restart_if_dead()
    except KeyboardInterrupt:
        print("stopping…", flush=True)
    finally:
        for child in reversed(children):
            stop(child.proc, timeout=20)
        for service in reversed(services):
            service.stop()
