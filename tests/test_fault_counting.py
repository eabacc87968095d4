"""Nothing lost, checked by counting: each fault test submits sessions, injects one kind of fault
(runners SIGKILLed mid-job, a runner paused past its heartbeat, the control plane crashed, Redis
restarted empty, PostgreSQL stopped for seconds) and counts every session the client was told was
created (201) complete, exactly once.

"Exactly once" is measured, not assumed:
- a trigger in this module's own PostgreSQL records every update that leaves an interaction
  finished, so each reply must have been finished by exactly one accepted update (a second final
  update the control plane let through would be a second row);
- each session has one user turn and one reply, complete, of exactly `max_tokens` tokens (replies
  run to their length, so a reply made of two attempts' text, or cut short, shows);
- `metadata.attempts` is what the injected faults imply: 1 plus the number of times the reply's
  job was lost once started (held by a killed or paused runner, or wiped with Redis);
- RQ's queue and registries of the model are empty afterwards.

The module runs its own PostgreSQL, Valkey, control plane (two gunicorn workers, each with a
reconciler thread) and two runners, so restarting them disturbs no other test.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg
import pytest
import requests
from psycopg.rows import dict_row
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry

from controlplane.accounts import store as accounts
from controlplane.devstack.embedded import EmbeddedPostgres, EmbeddedValkey, free_port, wait_for_port
from controlplane.http.serving import gunicorn_command
from controlplane.storage.migrate import apply_migrations
from shared.jobs import WorkKind, job_id_for, queue_name
from shared.runners import runner_of_worker
from tests.conftest import Process, User, freeze, start_runner, thaw, vllm_server, wait_until

MODEL = "helix/tiny-chat-faults"  # served only by this module's runners
MAX_TOKENS = 24
TEXT_WORKERS = 8  # jobs in flight at once per runner
# The counts below are of a runner's workers: no reserve threads beside them (test_fair_batch.py
# covers those), so that "every worker holds a job" means exactly TEXT_WORKERS jobs a runner.
NO_RESERVE = {"HELIX_TEXT_RESERVE_WORKERS": "0"}
RUNNER_IDS = ("fault-a", "fault-b")
# Replies run to max_tokens, so that their length is known.
FULL_LENGTH = {"HELIX_SAMPLING_EXTRA": json.dumps({"ignore_eos": True})}

# Every update that leaves an interaction finished, as PostgreSQL committed it.
FINAL_UPDATES_SQL = """
CREATE TABLE fault_final_updates (
    interaction_id text NOT NULL, state text NOT NULL, runner text NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION fault_record_final_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fault_final_updates (interaction_id, state, runner) VALUES (NEW.id, NEW.state, NEW.runner);
    RETURN NEW;
END $$;
CREATE TRIGGER fault_final_updates AFTER UPDATE ON interactions
    FOR EACH ROW WHEN (NEW.finished) EXECUTE FUNCTION fault_record_final_update();
"""


class Stack:
    """A private PostgreSQL, Valkey, control plane and two runners, each of which a test can
    stop, kill or restart on the same port (runners and clients keep their settings)."""

    def __init__(self, root: Path, models_dir: Path):
        self.root, self.models_dir = root, models_dir
        self.postgres = EmbeddedPostgres(root / "pg", free_port())
        self.valkey_port, self.api_port = free_port(), free_port()
        self.valkey: EmbeddedValkey | None = None
        self.valkey_starts = 0
        self.control_plane: Process | None = None
        self.control_plane_starts = 0
        self.runners: dict[str, Process] = {}
        self.runner_starts = 0
        self.token = ""

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.valkey_port}/0"

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url)

    def db(self) -> psycopg.Connection:
        return psycopg.connect(self.postgres.url, row_factory=dict_row, autocommit=True)

    # -- the services ---------------------------------------------------------------------
    def start_valkey(self) -> None:
        """Each start gets a fresh data folder: Valkey comes back empty, as without persistence."""
        self.valkey_starts += 1
        self.valkey = EmbeddedValkey(self.root / f"valkey-{self.valkey_starts}", self.valkey_port).start()

    def start_control_plane(self) -> None:
        self.control_plane_starts += 1
        env = {**os.environ, "DATABASE_URL": self.postgres.url, "REDIS_URL": self.redis_url,
               "HELIX_RECONCILE_INTERVAL": "1", "HELIX_FILESTORE": str(self.root / "files"),
               "HELIX_TEXT_MODELS": MODEL}
        self.control_plane = Process(gunicorn_command(self.api_port), env,
                                     self.root / f"gunicorn-{self.control_plane_starts}.log")
        wait_for_port(self.api_port, 60, self.control_plane.proc)
        wait_until(self._healthy, 120, "the control plane never answered /healthz")

    def _healthy(self) -> bool:
        try:
            return requests.get(self.api_url + "/healthz", timeout=10).ok
        except requests.RequestException:
            return False

    def crash_control_plane(self) -> None:
        """SIGKILL to gunicorn's master and its workers, as a machine or container dies: requests
        being answered get no reply, whatever they committed."""
        master = psutil.Process(self.control_plane.proc.pid)
        processes = [master, *master.children(recursive=True)]
        for p in processes:
            p.send_signal(signal.SIGKILL)
        psutil.wait_procs(processes, timeout=10)
        self.control_plane.stop()

    def start_runner(self, runner_id: str) -> Process:
        """A runner process (a new one for each start, logging to its own file)."""
        self.runner_starts += 1
        log_dir = self.root / f"runner-start-{self.runner_starts}"
        log_dir.mkdir()
        proc = start_runner(self.api_url, {"redis_url": self.redis_url}, self.token, self.models_dir, log_dir,
                            runner_id=runner_id, text_model=MODEL,
                            extra_env={"HELIX_TEXT_WORKERS": str(TEXT_WORKERS), "HELIX_FINETUNE_WORKERS": "0",
                                       **NO_RESERVE, **FULL_LENGTH})
        self.runners[runner_id] = proc
        return proc

    def wait_ready(self, runner_id: str) -> None:
        self.runners[runner_id].wait_for_log("ready:", timeout=300)

    def kill_runner(self, runner_id: str) -> None:
        """SIGKILL to the runner's supervisor; its workers and vLLM die with it."""
        proc = self.runners[runner_id]
        server = vllm_server(proc)
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait()
        thaw(server)  # a frozen vLLM must run to take its parent-death signal
        proc.stop()

    def freeze(self, runner_id: str):
        server = vllm_server(self.runners[runner_id])
        freeze(server)
        return server

    def text_worker(self, runner_id: str) -> psutil.Process:
        """The runner's text worker process (its RQ workers, one per thread): its one child besides
        vLLM (RQ retitles the process, so its command line does not name it)."""
        found = [p for p in psutil.Process(self.runners[runner_id].proc.pid).children()
                 if "vllm.entrypoints" not in " ".join(p.cmdline())]
        assert len(found) == 1, found
        return found[0]

    def busy_workers(self, runner_id: str) -> list[str]:
        """The runner's RQ workers that say they are running a job."""
        redis = self.redis()
        return [key.decode() for key in redis.scan_iter(f"rq:worker:{runner_id}.*")
                if redis.hget(key, "state") == b"busy"]

    def stop(self) -> None:
        for proc in self.runners.values():
            try:  # a vLLM a failed test left frozen would outlive its runner
                thaw(vllm_server(proc))
            except (AssertionError, psutil.Error):
                pass  # the runner is gone, or has no vLLM yet
            proc.stop()
        if self.control_plane is not None:
            self.control_plane.stop()
        if self.valkey is not None:
            self.valkey.stop()
        self.postgres.stop()

    # -- what a test reads ------------------------------------------------------------------
    def queue(self) -> Queue:
        return Queue(queue_name(WorkKind.TEXT_INFERENCE, MODEL), connection=self.redis())

    def holders(self, interaction_ids) -> dict[str, str]:
        """The runner whose worker holds each interaction's job now (started and not finished)."""
        redis, held = self.redis(), {}
        for iid in interaction_ids:
            status, worker = redis.hmget(Job.key_for(job_id_for(iid)), "status", "worker_name")
            if status == b"started" and worker:
                held[iid] = runner_of_worker(worker.decode())
        return held

    def jobs(self, interaction_ids) -> dict[str, tuple]:
        """Each interaction's job as Redis has it: status, worker, and whether its queue lists it."""
        redis, queue = self.redis(), self.queue()
        listed = set(queue.get_job_ids())
        return {iid: (*(v and v.decode() for v in redis.hmget(Job.key_for(job_id_for(iid)), "status", "worker_name")),
                      job_id_for(iid) in listed) for iid in interaction_ids}

    def unfinished(self, interaction_ids) -> set[str]:
        with self.db() as conn:
            rows = conn.execute("SELECT id FROM interactions WHERE id = ANY(%s) AND NOT finished",
                                (list(interaction_ids),)).fetchall()
        return {r["id"] for r in rows}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models_dir):
    s = Stack(tmp_path_factory.mktemp("fault-stack"), models_dir)
    try:
        s.postgres.start()
        apply_migrations(s.postgres.url)
        with s.db() as conn:
            conn.execute(FINAL_UPDATES_SQL)
            s.token = accounts.create_runner_token(conn, "fault runners")[1]
        s.start_valkey()
        s.start_control_plane()
        for runner_id in RUNNER_IDS:
            s.start_runner(runner_id)
        for runner_id in RUNNER_IDS:
            s.wait_ready(runner_id)
        yield s
    finally:
        s.stop()


def new_user(stack) -> User:
    with stack.db() as conn:
        row = accounts.create_user(conn, f"faults-{time.monotonic_ns()}@example.com")
        return User(row, accounts.create_api_key(conn, row["id"], "faults")[1])


@pytest.fixture()
def user(stack) -> User:
    """A user of the private stack, new for each test, so a test counts only its own sessions."""
    return new_user(stack)


@dataclass
class Client:
    """Creates sessions as a careful client does: retries a 503 (and a control plane that does
    not answer) until it gets its 201. Each request has an input of its own, so what each
    request stored can be told apart afterwards."""

    stack: Stack
    user: User
    created: dict[str, str] = field(default_factory=dict)  # session id -> its reply's interaction id
    answers: dict[str, int | None] = field(default_factory=dict)  # a request's input -> its status (None: no answer)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self, label: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        for attempt in range(1, 10**6):
            text = f"{label}, request {attempt}"
            try:
                r = requests.post(f"{self.stack.api_url}/api/v1/sessions", headers=self.user.headers, timeout=30,
                                  data={"input": text, "mode": "inference", "type": "text",
                                        "model_name": MODEL, "max_tokens": str(MAX_TOKENS)})
            except requests.RequestException:
                r = None
            with self.lock:
                self.answers[text] = r.status_code if r is not None else None
                if r is not None and r.status_code == 201:
                    self.created[r.json()["id"]] = r.json()["interactions"][-1]["id"]
                    return r.json()["interactions"][-1]["id"]
            assert r is None or r.status_code == 503, (r.status_code, r.text)
            assert time.monotonic() < deadline, f"no session created for {label!r} in {timeout}s"
            time.sleep(0.3)

    @property
    def refused(self) -> int:
        return sum(status == 503 for status in self.answers.values())

    def create_many(self, label: str, count: int) -> list[str]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda n: self.create(f"{label} {n}"), range(count)))

    @property
    def replies(self) -> list[str]:
        return list(self.created.values())


def assert_each_answered_once(stack: Stack, client: Client, attempts: dict[str, int], timeout: float = 120) -> None:
    """Every session of the client's user completes with exactly one reply, finished by exactly
    one accepted update, after the attempts the test's faults imply; RQ is left clean."""
    with stack.db() as conn:
        rows = conn.execute(
            "SELECT s.id, (SELECT message FROM interactions WHERE session_id = s.id AND creator = 'user') AS input,"
            " (SELECT id FROM interactions WHERE session_id = s.id AND creator = 'system' LIMIT 1) AS reply"
            " FROM sessions s WHERE s.owner = %s", (client.user.id,)).fetchall()
    stored = {r["id"]: r["reply"] for r in rows}
    # Told 201 means stored, once; a 503 stored nothing; a request that got no answer may have.
    assert set(client.created) <= set(stored), set(client.created) - set(stored)
    unreported = {r["input"]: client.answers.get(r["input"], "never sent") for r in rows if r["id"] not in client.created}
    assert all(status is None for status in unreported.values()), unreported
    replies = set(stored.values())
    wait_until(lambda: not stack.unfinished(replies), timeout, f"all {len(replies)} replies finished")
    for sid, reply_id in stored.items():
        r = requests.get(f"{stack.api_url}/api/v1/sessions/{sid}", headers=client.user.headers, timeout=30)
        assert r.status_code == 200, r.text
        turns = r.json()["interactions"]
        assert [i["creator"] for i in turns] == ["user", "system"], turns
        reply = turns[1]
        assert reply["id"] == reply_id and reply["finished"] and reply["state"] == "complete", reply
        assert reply["message"] and reply["usage"]["completion_tokens"] == MAX_TOKENS, reply
        assert int(reply["metadata"].get("attempts", 1)) == attempts.get(reply_id, 1), (attempts.get(reply_id, 1), reply)
    with stack.db() as conn:
        counts = {r["interaction_id"]: r["n"] for r in conn.execute(
            "SELECT interaction_id, count(*) AS n FROM fault_final_updates WHERE interaction_id = ANY(%s)"
            " GROUP BY interaction_id", (list(replies),))}
    assert counts == {iid: 1 for iid in replies}, {k: v for k, v in counts.items() if v != 1}
    queue = stack.queue()
    started, failed = StartedJobRegistry(queue=queue), FailedJobRegistry(queue=queue)
    wait_until(lambda: started.count == 0 and queue.count == 0, 30,
               "RQ's queue and started registry empty")
    assert failed.count == 0, failed.get_job_ids()


def hold_jobs(stack: Stack, client: Client, runner_id: str, label: str, least: int = 2) -> set[str]:
    """Freezes the runner's vLLM and submits sessions, a few at a time, until it holds at least
    `least` jobs mid-reply (the other runner answers the rest); returns the replies it holds."""
    stack.freeze(runner_id)
    batch: list[str] = []
    while True:
        batch += client.create_many(f"{label} {len(batch)}", 3)
        wait_until(lambda: all(i in stack.holders(batch) or i not in stack.unfinished(batch) for i in batch),
                   60, f"{label}: every job started or finished")
        held = {i for i, r in stack.holders(batch).items() if r == runner_id}
        if len(held) >= least:
            return held
        assert len(batch) < 24, f"{runner_id} never took {least} jobs"


def assert_every_worker_takes_a_job(stack: Stack, client: Client, label: str,
                                    others: tuple[Client, ...] = ()) -> None:
    """Both runners at full strength: with their vLLMs frozen, every RQ worker of theirs takes
    job when there are enough (a worker that quit on a Redis error would leave one queued).
    `others`: clients whose unfinished jobs may hold workers too."""
    servers = [stack.freeze(r) for r in RUNNER_IDS]

    def replies() -> list[str]:
        return client.replies + [iid for other in others for iid in other.replies]

    try:
        client.create_many(label, 2 * TEXT_WORKERS)
        # Each worker holds at most one job: as many held as there are workers is all of them.
        wait_until(lambda: len(stack.holders(replies())) == 2 * TEXT_WORKERS, 90, "every worker holding a job",
                   detail=lambda: f"{len(stack.holders(replies()))} of {2 * TEXT_WORKERS} workers busy")
    finally:
        for server in servers:
            thaw(server)


# -- the faults ---------------------------------------------------------------------------------


def test_control_plane_restarted_with_sessions_in_flight(stack, user):
    """The control plane dies while runners hold jobs and clients create sessions; replies that
    finish while it is down are delivered once it is back, and nothing runs twice."""
    client = Client(stack, user)
    servers = [stack.freeze(r) for r in RUNNER_IDS]
    try:
        first = client.create_many("before the restart", 12)
        wait_until(lambda: len(stack.holders(first)) == len(first), 60, "all 12 jobs started")
        stack.crash_control_plane()
    finally:
        for server in servers:
            thaw(server)  # the runners finish their replies while nobody can take them
    during = threading.Thread(target=client.create_many, args=("during the restart", 4))
    during.start()
    time.sleep(2)
    stack.start_control_plane()
    during.join(120)
    assert len(client.created) == 16
    assert_each_answered_once(stack, client, attempts={})


def test_redis_restarted_empty_with_sessions_queued_and_running(stack, user):
    """Valkey goes away for a few seconds, while replies finish, and comes back with nothing:
    every job, queued or running, is gone. The reconciler queues each again, once; jobs that fair
    share held back in PostgreSQL were never in Redis and run once; every RQ worker of both
    runners reconnects (all of them take a job afterwards) and each session is answered once."""
    client, other = Client(stack, user), Client(stack, new_user(stack))
    servers = [stack.freeze(r) for r in RUNNER_IDS]
    try:
        running = client.create_many("running", 2 * TEXT_WORKERS)  # every worker holds one
        wait_until(lambda: len(stack.holders(running)) == len(running), 60, "every worker holding a job")
        held = client.create_many("held", 2)  # past the user's share of the workers: in PostgreSQL
        queued = other.create_many("queued", 4)  # within another user's share: queued in Redis
        assert stack.queue().count == len(queued)
        assert all(status is None for status, _, _ in stack.jobs(held).values())  # no job of theirs in Redis
        stack.valkey.stop()
    finally:
        for server in servers:
            thaw(server)  # the running replies end while Redis is away
    time.sleep(3)
    stack.start_valkey()
    assert_every_worker_takes_a_job(stack, client, "after the restart", others=(other,))
    assert_each_answered_once(stack, client, attempts={iid: 2 for iid in running}, timeout=180)
    assert_each_answered_once(stack, other, attempts={iid: 2 for iid in queued})


def test_postgres_stopped_for_seconds_under_load(stack, user):
    """PostgreSQL goes away for a few seconds while sessions are being created and runners are
    reporting: clients get 503s they retry, runners retry their final updates, and every session
    a client was told was created is answered once; a 503 created nothing."""
    client = Client(stack, user)
    servers = [stack.freeze(r) for r in RUNNER_IDS]
    creating = None
    try:
        first = client.create_many("before the outage", 8)
        wait_until(lambda: len(stack.holders(first)) == len(first), 60, "the first 8 jobs started")
        stack.postgres.stop()
        for server in servers:
            thaw(server)  # replies finish and their final updates meet the outage
        servers = []
        creating = threading.Thread(target=client.create_many, args=("during the outage", 8))
        creating.start()
        time.sleep(4)
    finally:
        for server in servers:
            thaw(server)
        stack.postgres.start()
        if creating is not None:
            creating.join(120)
    assert client.refused > 0, "no client request met the outage"
    assert len(client.created) == 16
    assert_each_answered_once(stack, client, attempts={})


def stall_and_wake(stack: Stack, stalled: set[str]) -> None:
    """Stops fault-a's worker process (a long pause, a network partition) while it holds the
    `stalled` jobs; once its heartbeats lapse and fault-b (frozen) holds those jobs queued again,
    wakes fault-a, lets its stale attempts end, then lets fault-b answer."""
    worker = stack.text_worker("fault-a")
    worker.suspend()
    b_server = None
    try:
        thaw(vllm_server(stack.runners["fault-a"]))  # its replies are ready when the worker wakes
        b_server = stack.freeze("fault-b")
        wait_until(lambda: stack.holders(stalled) == {i: "fault-b" for i in stalled}, 60,
                   "fault-b holding the stalled jobs, queued again", detail=lambda: stack.jobs(stalled))
        worker.resume()
        wait_until(lambda: not stack.busy_workers("fault-a"), 60, "fault-a's stale attempts over")
    finally:
        worker.resume()
        if b_server is not None:
            thaw(b_server)


def test_a_stalled_runner_finishing_jobs_queued_again_disturbs_nothing(stack, user):
    """fault-a stalls with every worker busy; its jobs are queued again and fault-b takes them.
    fault-a wakes and ends its stale attempts (their updates refused) while fault-b's attempts
    run: those must still be the ones that answer, once each, at attempt 2."""
    client = Client(stack, user)
    stack.freeze("fault-a")  # stall_and_wake thaws it once its worker is stopped
    b_server = stack.freeze("fault-b")
    try:
        ids = client.create_many("stalled busy", 2 * TEXT_WORKERS)  # every worker of both holds one
        wait_until(lambda: len(stack.holders(ids)) == len(ids), 60, "every worker holding a job")
    finally:
        thaw(b_server)
    stalled = {i for i, r in stack.holders(ids).items() if r == "fault-a"}
    assert len(stalled) == TEXT_WORKERS
    wait_until(lambda: len(stack.unfinished(ids)) == TEXT_WORKERS, 60, "fault-b's own replies done")
    stall_and_wake(stack, stalled)
    assert_each_answered_once(stack, client, attempts={iid: 2 for iid in stalled})


def test_jobs_taken_by_a_stalled_runner_are_queued_again(stack, user):
    """fault-a stalls holding a few jobs with its other workers idle in a blocking dequeue:
    Redis hands those stalled workers the jobs queued again, which they never start. The
    reconciler must see such jobs off their queue and queue them again (not counted as attempts,
    since they never ran) until fault-b takes them; each is answered once, at attempt 2."""
    client = Client(stack, user)
    stalled = hold_jobs(stack, client, "fault-a", "stalled idle")  # fault-a's vLLM frozen
    stall_and_wake(stack, stalled)
    assert_each_answered_once(stack, client, attempts={iid: 2 for iid in stalled})


def test_runners_killed_mid_job_several_times(stack, user):
    """Two runners, three SIGKILLs mid-job: fault-a holding jobs; then fault-b holding
    fault-a's re-queued jobs and new ones; then fault-a again, restarted, holding new jobs. Each
    lost job runs again on the runner left (or back), and its attempts count the kills that hit
    it: 3 for a job killed twice, the most the reconciler allows."""
    client = Client(stack, user)
    attempts: dict[str, int] = {}

    def kill_holding(victim: str, label: str, also_held: set[str] = frozenset()) -> set[str]:
        """Kills the victim once it holds jobs of new sessions (and `also_held`); returns the
        replies whose jobs it held, each of which needs one more attempt."""
        # Its replies of earlier batches done first (on a loaded machine they can still be running):
        # else they and the re-queued jobs may fill every worker it has, leaving none for new ones.
        wait_until(lambda: {i for i, r in stack.holders(client.replies).items() if r == victim} <= set(also_held),
                   120, f"{label}: the victim done with earlier replies")
        # The re-queued jobs first: new sessions sent before them could fill every worker.
        stack.freeze(victim)
        wait_until(lambda: stack.holders(also_held) == {i: victim for i in also_held}, 60,
                   f"{label}: the victim holding the re-queued jobs")
        held = hold_jobs(stack, client, victim, label)
        stack.kill_runner(victim)
        # Every reply it held when it died: those of earlier batches too (on a loaded machine the
        # runner left answering one batch may still be mid-reply when it is the next victim).
        hit = {i for i, r in stack.holders(client.replies).items() if r == victim}
        assert held | set(also_held) <= hit, (held, also_held, hit)
        for iid in hit:
            attempts[iid] = attempts.get(iid, 1) + 1
        return hit

    first = kill_holding("fault-a", "first kill")
    stack.start_runner("fault-a")  # comes back while fault-b works
    # fault-b alone now: it takes new sessions and, once their worker keys expire, fault-a's jobs.
    second = kill_holding("fault-b", "second kill", also_held=first)
    stack.start_runner("fault-b")
    stack.wait_ready("fault-a")
    # fault-a answers what fault-b held, then is killed holding new jobs: fault-b, back, takes them.
    wait_until(lambda: not stack.unfinished(second), 120, "fault-a answering what fault-b held")
    third = kill_holding("fault-a", "third kill")
    assert first and second and third and first <= second
    assert_each_answered_once(stack, client, attempts, timeout=180)
