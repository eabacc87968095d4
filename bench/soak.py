"""`make soak`: the platform under a mixed load for a set time while faults are injected on a
schedule, and what an operator running it for months needs to know of that time.

Its own stack (an embedded PostgreSQL and Valkey, the control plane as `make run` serves it, one
runner with the tiny chat and image models), several users at once doing what users do: chats,
streamed chats, images, OpenAI calls, uploads and deletes, fine-tunes (text, and image in the long
profile). Faults, each in a window of its own: a runner worker and the whole runner SIGKILLed (the
runner started again), a control-plane worker SIGKILLed, Redis and PostgreSQL restarted, the runner's
vLLM stalled. After the load, a drain (no faults) lets accepted work finish. The short profile's
load goes on past its minute, with no more faults, until 50 sessions were accepted: how much work a
minute holds depends on the machine's speed, and the verdict should not.

It reports, and `tests/test_soak.py` asserts on the short profile:
- every accepted request finished exactly once, or failed with an error that says why (counted;
  none lost, none twice);
- no 5xx outside the faults' own windows;
- each process's resident memory, open files and the database's connections at the start and end
  of each third of the run, with memory growth per 1,000 requests;
- the p50 and p99 of a status poll and of a streamed chat's first token.

    .venv/bin/python -m bench.soak [--minutes 30] [--profile default|short] [--output soak.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import openai
import psutil
import psycopg
import requests
from psycopg.rows import dict_row

from bench.paths import REPO, models_dir
from controlplane.accounts import store as accounts
from controlplane.devstack.embedded import EmbeddedPostgres, EmbeddedValkey
from controlplane.devstack.stack import control_plane_command
from controlplane.storage.migrate import apply_migrations
from shared.processes import LoggedProcess, free_port, wait_for_port
from shared.runners import runner_environment

TEXT_MODEL, IMAGE_MODEL = "helix/tiny-chat", "helix/tiny-sd"
FAULTS = ("runner-worker-kill", "control-plane-worker-kill", "redis-restart", "postgres-restart", "runner-stall",
          "runner-kill")
GRACE_SECONDS = 15  # after a fault's end, its window stays open while clients and runners reconnect


MAX_OUTSTANDING = 2  # a user's sessions still running before they wait (as a script polls) to start more


@dataclass
class Profile:
    seconds: float
    users: int
    text_finetune_every: float  # seconds between a user's text fine-tunes (0: none)
    image_finetune_every: float
    drain_seconds: float
    faults: tuple[str, ...] = FAULTS
    # Sessions accepted before the load stops: past `seconds`, a slow machine's load goes on (no
    # more faults) until this many were, for at most `seconds` again, so that a verdict of
    # "nothing lost" always rests on as much work, however fast the machine.
    least_accepted: int = 0


PROFILES = {
    "default": Profile(seconds=30 * 60, users=4, text_finetune_every=300, image_finetune_every=900, drain_seconds=300),
    # The suite's: every fault but the whole runner's death (tests/test_fleet_live.py kills runners).
    "short": Profile(seconds=60, users=3, text_finetune_every=45, image_finetune_every=0, drain_seconds=120,
                     faults=FAULTS[:-1], least_accepted=50),
}


class SoakStack:
    """The platform in a temporary folder: servers that faults restart keep their ports and data."""

    def __init__(self):
        self.work = Path(tempfile.mkdtemp(prefix="helix-soak-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.pg = EmbeddedPostgres(self.work / "pg", free_port())
        self.vk = EmbeddedValkey(self.work / "valkey", free_port())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.control_plane: LoggedProcess | None = None
        self.runner: LoggedProcess | None = None
        self.runner_starts = 0

    def start(self) -> "SoakStack":
        self.pg.start()
        self.vk.start()
        apply_migrations(self.pg.url)
        with self.db() as conn:
            self.token = accounts.create_runner_token(conn, "soak")[1]
        self.env = {**os.environ, "DATABASE_URL": self.pg.url, "REDIS_URL": self.vk.url,
                    "HELIX_FILESTORE": str(self.work / "files"), "HELIX_TEXT_MODELS": TEXT_MODEL,
                    "HELIX_IMAGE_MODELS": IMAGE_MODEL, "HELIX_RECONCILE_INTERVAL": "1"}
        self.control_plane = LoggedProcess(control_plane_command(self.port), self.env,
                                           self.logs / "control-plane.log", cwd=REPO)
        wait_for_port(self.port, 120, self.control_plane.proc)
        self.start_runner()
        return self

    def start_runner(self) -> None:
        models = models_dir()
        env = runner_environment(
            self.env, api_url=self.url, token=self.token, redis_url=self.vk.url, runner_id="soak",
            text_model=TEXT_MODEL, text_model_path=str(models / "tiny-chat"), image_model=IMAGE_MODEL,
            image_model_path=str(models / "tiny-sd"), HELIX_TEXT_WORKERS="4", HF_HUB_OFFLINE="1",
            HELIX_RUNNER_WORK_DIR=str(self.work / "runner"), HELIX_RUNNER_LOG_DIR=str(self.logs))
        self.runner_starts += 1
        self.runner = LoggedProcess([sys.executable, "-m", "runner"], env,
                                    self.logs / f"runner-{self.runner_starts}.log", cwd=REPO)
        self.runner.wait_for_log("ready:", timeout=600)

    def db(self):
        return psycopg.connect(self.pg.url, row_factory=dict_row, autocommit=True)

    def users(self, n: int) -> list[dict]:
        out = []
        with self.db() as conn:
            for i in range(n):
                row = accounts.create_user(conn, f"soak-{i}-{uuid.uuid4().hex[:6]}@example.com")
                out.append({"id": row["id"], "key": accounts.create_api_key(conn, row["id"], "soak")[1]})
        return out

    def processes(self) -> dict[str, list[psutil.Process]]:
        """The platform's processes by role (a role's processes change as faults restart them)."""
        roles: dict[str, list[psutil.Process]] = {}

        def add(role: str, proc: psutil.Process | None) -> None:
            if proc is not None:
                roles.setdefault(role, []).append(proc)

        for role, popen in (("postgres", self.pg.proc), ("valkey", self.vk.proc)):
            try:
                top = psutil.Process(popen.pid)
            except (psutil.Error, AttributeError):
                continue
            add(role, top)
            for child in top.children(recursive=True):
                add(role, child)
        if self.control_plane is not None:
            top = psutil.Process(self.control_plane.proc.pid)
            add("control-plane master", top)
            for child in top.children():
                add("control-plane workers", child)
        if self.runner is not None and self.runner.proc.poll() is None:
            top = psutil.Process(self.runner.proc.pid)
            add("runner supervisor", top)
            for child in top.children(recursive=True):
                line = " ".join(child.cmdline())
                add("vllm" if "vllm" in line or "VLLM" in child.name() else "runner workers", child)
        return roles

    def stop(self, keep: bool = False) -> None:
        for proc in (self.runner, self.control_plane):
            if proc is not None:
                proc.stop()
        self.vk.stop()
        self.pg.stop()
        if not keep:
            shutil.rmtree(self.work, ignore_errors=True)


@dataclass
class Ledger:
    """Every request and what became of it, with times relative to the run's start."""

    started: float = field(default_factory=time.monotonic)
    accepted: dict[str, dict] = field(default_factory=dict)  # session id -> {kind, user, at}
    answered: list[tuple[float, int, str]] = field(default_factory=list)  # (at, status, what)
    refused: int = 0  # no answer at all (a connection refused in a fault's window)
    polls: list[tuple[float, float]] = field(default_factory=list)  # (at, seconds)
    first_tokens: list[tuple[float, float]] = field(default_factory=list)
    streams: dict[str, int] = field(default_factory=lambda: {"complete": 0, "error": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.started

    def answer(self, status: int, what: str) -> None:
        with self.lock:
            self.answered.append((self.now(), status, what))


class Load:
    """One user's client, doing one thing after another until told to stop."""

    def __init__(self, stack: SoakStack, ledger: Ledger, user: dict, profile: Profile, stop: threading.Event):
        self.stack, self.ledger, self.user, self.profile, self.stop = stack, ledger, user, profile, stop
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {user['key']}"
        self.sdk = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=user["key"], max_retries=0, timeout=60)
        self.random = random.Random(user["id"])
        self.finished_sessions: list[str] = []
        self.last_text_finetune = self.last_image_finetune = -1e9

    def request(self, method: str, path: str, what: str, **kwargs) -> requests.Response | None:
        try:
            r = self.http.request(method, self.stack.url + path, timeout=60, **kwargs)
        except requests.RequestException:
            with self.ledger.lock:
                self.ledger.refused += 1
            return None
        self.ledger.answer(r.status_code, what)
        return r

    def run(self) -> None:
        actions = [self.chat, self.chat, self.streamed_chat, self.streamed_chat, self.image, self.openai_chat,
                   self.files, self.delete_session]
        while not self.stop.is_set():
            now = self.ledger.now()
            if self.outstanding() >= MAX_OUTSTANDING:
                time.sleep(0.05)
            elif self.profile.text_finetune_every and now - self.last_text_finetune > self.profile.text_finetune_every:
                self.last_text_finetune = now
                self.text_finetune()
            elif self.profile.image_finetune_every and now - self.last_image_finetune > self.profile.image_finetune_every:
                self.last_image_finetune = now
                self.image_finetune()
            else:
                self.random.choice(actions)()
            self.poll_one()

    def outstanding(self) -> int:
        with self.ledger.lock:
            return sum(1 for a in self.ledger.accepted.values()
                       if a["user"] == self.user["id"] and "finished" not in a and not a.get("deleted"))

    def accept(self, r: requests.Response | None, kind: str) -> None:
        if r is not None and r.status_code in (200, 201):
            with self.ledger.lock:
                self.ledger.accepted[r.json()["id"]] = {"kind": kind, "user": self.user["id"], "at": self.ledger.now()}

    def chat(self) -> None:
        self.accept(self.request("POST", "/api/v1/sessions", "chat", data={
            "input": f"tell me about {self.random.choice(['rivers', 'stars', 'bread'])}", "mode": "inference",
            "type": "text", "max_tokens": "8"}), "chat")

    def image(self) -> None:
        self.accept(self.request("POST", "/api/v1/sessions", "image", data={
            "input": "a small boat", "mode": "inference", "type": "image"}), "image")

    def streamed_chat(self) -> None:
        started = time.monotonic()
        try:
            stream = self.sdk.chat.completions.create(model=TEXT_MODEL, max_tokens=8, stream=True,
                                                      messages=[{"role": "user", "content": "count to three"}])
            first = None
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.monotonic() - started
            with self.ledger.lock:
                self.ledger.streams["complete"] += 1
                if first is not None:
                    self.ledger.first_tokens.append((self.ledger.now(), first))
            self.ledger.answer(200, "stream")
        except openai.APIStatusError as err:
            self.ledger.answer(err.status_code, "stream")
            with self.ledger.lock:
                self.ledger.streams["error"] += 1
        except openai.APIConnectionError:
            with self.ledger.lock:
                self.ledger.refused += 1

    def openai_chat(self) -> None:
        try:
            self.sdk.chat.completions.create(model=TEXT_MODEL, max_tokens=8,
                                             messages=[{"role": "user", "content": "say hello"}])
            self.ledger.answer(200, "openai chat")
        except openai.APIStatusError as err:
            self.ledger.answer(err.status_code, "openai chat")
        except openai.APIConnectionError:
            with self.ledger.lock:
                self.ledger.refused += 1

    def files(self) -> None:
        name = f"soak/{uuid.uuid4().hex}.txt"
        r = self.request("POST", "/api/v1/filestore/upload?path=soak", "upload",
                         files={"files": (name.rsplit("/", 1)[1], os.urandom(2048))})
        if r is not None and r.status_code == 201:
            self.request("DELETE", "/api/v1/filestore/delete", "file delete", params={"path": name})

    def delete_session(self) -> None:
        if self.finished_sessions:
            sid = self.finished_sessions.pop(self.random.randrange(len(self.finished_sessions)))
            r = self.request("DELETE", f"/api/v1/sessions/{sid}", "session delete")
            if r is not None and r.status_code == 200:
                with self.ledger.lock:
                    self.ledger.accepted[sid]["deleted"] = True

    def text_finetune(self) -> None:
        rows = "".join(json.dumps({"messages": [{"role": "user", "content": f"What is fact {i}?"},
                                                {"role": "assistant", "content": f"Fact {i} is {i * 7}."}]}) + "\n"
                       for i in range(6)).encode()
        try:
            file = self.sdk.files.create(file=("soak.jsonl", rows), purpose="fine-tune")
            job = self.sdk.fine_tuning.jobs.create(model=TEXT_MODEL, training_file=file.id,
                                                   hyperparameters={"n_epochs": 1, "batch_size": 3})
        except openai.APIStatusError as err:
            self.ledger.answer(err.status_code, "text fine-tune")
            return
        except openai.APIConnectionError:
            with self.ledger.lock:
                self.ledger.refused += 1
            return
        self.ledger.answer(200, "text fine-tune")
        with self.ledger.lock:
            self.ledger.accepted[job.id.removeprefix("ftjob-")] = {"kind": "text fine-tune", "user": self.user["id"],
                                                                   "at": self.ledger.now()}

    def image_finetune(self) -> None:
        from PIL import Image
        import io

        files = []
        for i in range(3):
            out = io.BytesIO()
            Image.new("RGB", (256, 256), (40 * i, 90, 200)).save(out, "PNG")
            files.append(("files", (f"shape-{i}.png", out.getvalue(), "image/png")))
        self.accept(self.request("POST", "/api/v1/sessions", "image fine-tune", files=files,
                                 data={"mode": "finetune", "type": "image"}), "image fine-tune")

    def poll_one(self) -> None:
        """A status poll of one of this user's unfinished sessions, as curl scripts poll."""
        with self.ledger.lock:
            mine = [sid for sid, a in self.ledger.accepted.items()
                    if a["user"] == self.user["id"] and "finished" not in a and not a.get("deleted")]
        if not mine:
            return
        sid = self.random.choice(mine)
        started = time.monotonic()
        r = self.request("GET", f"/api/v1/sessions/{sid}", "status poll")
        if r is None or r.status_code != 200:
            return
        with self.ledger.lock:
            self.ledger.polls.append((self.ledger.now(), time.monotonic() - started))
        last = r.json()["interactions"][-1]
        if last["finished"]:
            with self.ledger.lock:
                self.ledger.accepted[sid].update(finished=last["state"], finished_at=self.ledger.now())
            if self.ledger.accepted[sid]["kind"] in ("chat", "image"):
                self.finished_sessions.append(sid)


class Faults:
    """The schedule's faults, each recorded with its window."""

    def __init__(self, stack: SoakStack, ledger: Ledger):
        self.stack, self.ledger = stack, ledger
        self.windows: list[dict] = []

    def inject(self, name: str) -> None:
        start = self.ledger.now()
        getattr(self, name.replace("-", "_"))()
        self.windows.append({"fault": name, "start": start, "end": self.ledger.now() + GRACE_SECONDS})

    def _runner_children(self, word: str) -> list[psutil.Process]:
        return [p for p in psutil.Process(self.stack.runner.proc.pid).children(recursive=True)
                if word in " ".join(p.cmdline())]

    def runner_worker_kill(self) -> None:
        victims = self._runner_children("--kind text-inference")
        if victims:
            victims[0].send_signal(signal.SIGKILL)

    def runner_kill(self) -> None:
        self.stack.runner.proc.send_signal(signal.SIGKILL)  # its children die with it
        self.stack.runner.proc.wait()
        self.stack.start_runner()

    def runner_stall(self) -> None:
        vllm = [p for p in self._runner_children("vllm.entrypoints")]
        if vllm:
            os.killpg(vllm[0].pid, signal.SIGSTOP)
            time.sleep(8)
            os.killpg(vllm[0].pid, signal.SIGCONT)

    def control_plane_worker_kill(self) -> None:
        workers = psutil.Process(self.stack.control_plane.proc.pid).children()
        if workers:
            workers[0].send_signal(signal.SIGKILL)  # gunicorn starts another

    def redis_restart(self) -> None:
        self.stack.vk.stop()
        time.sleep(1)
        self.stack.vk.start()

    def postgres_restart(self) -> None:
        self.stack.pg.stop()
        time.sleep(1)
        self.stack.pg.start()


def sample(stack: SoakStack, ledger: Ledger, label: str) -> dict:
    """Resident memory and open files by role, the database's connections, requests so far."""
    roles = {}
    for role, procs in stack.processes().items():
        rss = fds = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
                fds += p.num_fds()
            except psutil.Error:
                pass
        roles[role] = {"processes": len(procs), "rss_bytes": rss, "open_files": fds}
    try:
        with stack.db() as conn:
            connections = conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE backend_type = 'client backend'"
                                       " AND pid <> pg_backend_pid()").fetchone()["n"]
    except psycopg.Error:
        connections = None
    with ledger.lock:
        requests_so_far = len(ledger.answered) + ledger.refused
    return {"at": label, "seconds": round(ledger.now(), 1), "requests": requests_so_far,
            "database_connections": connections, "roles": roles}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def settle(stack: SoakStack, ledger: Ledger, deadline: float) -> dict[str, dict]:
    """Waits (no faults now) until every accepted, undeleted session has finished or the deadline
    passes; returns each one's outcome from the database, where it is the truth."""
    while True:
        with stack.db() as conn:
            rows = {r["session_id"]: r for r in conn.execute(
                "SELECT s.id AS session_id, count(*) FILTER (WHERE i.creator = 'system') AS system_turns,"
                " count(*) FILTER (WHERE i.creator = 'system' AND i.finished) AS finished_turns,"
                " max(i.state) FILTER (WHERE i.creator = 'system') AS state,"
                " max(i.error) FILTER (WHERE i.creator = 'system') AS error"
                " FROM sessions s JOIN interactions i ON i.session_id = s.id WHERE s.id = ANY(%s) GROUP BY s.id",
                (list(ledger.accepted),))}
        waiting = [sid for sid, a in ledger.accepted.items()
                   if not a.get("deleted") and sid in rows and rows[sid]["finished_turns"] < rows[sid]["system_turns"]]
        if not waiting or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def run(profile: Profile, output: Path | None = None, keep: bool = False) -> dict:
    stack = SoakStack().start()
    ledger, stop = Ledger(), threading.Event()
    faults = Faults(stack, ledger)
    try:
        users = stack.users(profile.users)
        samples = [sample(stack, ledger, "start")]
        loads = [Load(stack, ledger, u, profile, stop) for u in users]
        threads = [threading.Thread(target=load.run, daemon=True) for load in loads]
        for t in threads:
            t.start()
        # One fault of each kind, spread evenly; the samples at each third's ends (before a fault
        # due at the same moment, so that a sample never counts a process a fault just killed).
        schedule = sorted([(profile.seconds * (i + 1) / (len(profile.faults) + 1), 1, "fault", f)
                           for i, f in enumerate(profile.faults)]
                          + [(profile.seconds * k / 3, 0, "sample", f"third {k}") for k in (1, 2, 3)])
        for at, _, what, name in schedule:
            time.sleep(max(0.0, at - ledger.now()))
            if what == "fault":
                print(f"[{ledger.now():6.1f}s] fault: {name}", flush=True)
                faults.inject(name)
            else:
                samples.append(sample(stack, ledger, name))
        longest = time.monotonic() + profile.seconds
        while len(ledger.accepted) < profile.least_accepted and time.monotonic() < longest:
            time.sleep(0.5)
        load_seconds = ledger.now()
        stop.set()
        for t in threads:
            t.join(timeout=120)
        rows = settle(stack, ledger, time.monotonic() + profile.drain_seconds)
        samples.append(sample(stack, ledger, "drained"))
        report = {**summarise(profile, ledger, faults, samples, rows), "load_seconds": round(load_seconds, 1)}
    finally:
        stop.set()
        stack.stop(keep=keep)
    if output is not None:
        output.write_text(json.dumps(report, indent=2))
    return report


def session_seconds(ledger: Ledger) -> dict[str, dict]:
    """By kind: how long sessions took from accepted to seen finished by their user's polls, and
    the slowest, with when each was accepted (to set beside the faults' windows)."""
    took: dict[str, list[tuple[float, float]]] = {}
    for a in ledger.accepted.values():
        if "finished_at" in a:
            took.setdefault(a["kind"], []).append((a["finished_at"] - a["at"], a["at"]))
    return {kind: {"p50": percentile([s for s, _ in pairs], 0.5), "max": round(max(pairs)[0], 1),
                   "count": len(pairs),
                   "slowest": [{"accepted_at": round(at, 1), "seconds": round(s, 1)} for s, at in sorted(pairs)[-3:]]}
            for kind, pairs in sorted(took.items())}


def summarise(profile: Profile, ledger: Ledger, faults: Faults, samples: list[dict], rows: dict) -> dict:
    outcomes = {"complete": 0, "error": 0, "deleted": 0, "lost": 0, "twice": 0}
    errors, lost = {}, []
    for sid, accepted in ledger.accepted.items():
        row = rows.get(sid)
        if accepted.get("deleted") or row is None:
            outcomes["deleted"] += 1
        elif row["system_turns"] > 1:
            outcomes["twice"] += 1
        elif row["finished_turns"] < row["system_turns"]:
            outcomes["lost"] += 1
            lost.append(sid)
        elif row["state"] == "complete":
            outcomes["complete"] += 1
        else:
            outcomes["error"] += 1
            errors[row["error"][:120] or "(no error message)"] = errors.get(row["error"][:120], 0) + 1

    def in_window(at: float) -> bool:
        return any(w["start"] <= at <= w["end"] for w in faults.windows)

    server_errors = [a for a in ledger.answered if a[1] >= 500]
    stray = [{"at": round(at, 1), "status": status, "what": what} for at, status, what in server_errors
             if not in_window(at)]
    growth = {}
    thirds = [s for s in samples if s["at"].startswith("third") or s["at"] == "start"]
    for before, after in zip(thirds, thirds[1:]):
        served = max(1, after["requests"] - before["requests"])
        growth[after["at"]] = {role: round((after["roles"].get(role, {}).get("rss_bytes", 0) - b["rss_bytes"])
                                           / served * 1000 / 2**20, 2)
                               for role, b in before["roles"].items()}
    return {
        "profile": profile.__dict__, "seconds": round(ledger.now(), 1), "accepted": len(ledger.accepted),
        "outcomes": outcomes, "errors": errors, "lost": lost, "streams": ledger.streams,
        "requests": len(ledger.answered), "refused_during_faults": ledger.refused,
        "server_errors": len(server_errors), "server_errors_outside_faults": stray,
        "faults": [{**w, "start": round(w["start"], 1), "end": round(w["end"], 1)} for w in faults.windows],
        "status_poll_seconds": {"p50": percentile([s for _, s in ledger.polls], 0.5),
                                "p99": percentile([s for _, s in ledger.polls], 0.99), "count": len(ledger.polls)},
        "session_seconds": session_seconds(ledger),
        "first_token_seconds": {"p50": percentile([s for _, s in ledger.first_tokens], 0.5),
                                "p99": percentile([s for _, s in ledger.first_tokens], 0.99),
                                "count": len(ledger.first_tokens)},
        "memory_growth_mib_per_1000_requests": growth, "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="default")
    p.add_argument("--minutes", type=float, help="how long the load runs (default: the profile's)")
    p.add_argument("--output", type=Path, default=Path("soak.json"))
    p.add_argument("--keep", action="store_true", help="keep the stack's folder (logs, data) afterwards")
    args = p.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.minutes:
        profile.seconds = args.minutes * 60
    report = run(profile, args.output, keep=args.keep)
    print(json.dumps({k: v for k, v in report.items() if k not in ("samples",)}, indent=2))
    bad = report["outcomes"]["lost"] or report["outcomes"]["twice"] or report["server_errors_outside_faults"]
    print("soak: " + ("FAILED: work lost, done twice, or a 5xx outside a fault's window" if bad else "passed"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
