"""The `helix` command's user commands (clients/python/helix_client/cli.py), run as a person runs
them against the live server and the tiny runner: login keeps the key readable by its owner
alone; chat streams and goes on with a session; sessions, files and images; a refusal is one line
with the server's message and exit code 1; --json for scripts; a fine-tune watched in a terminal
(tmux), its screen read as a person sees it."""
from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from helix_client.cli import FinetuneView, sparkline

from tests.conftest import IMAGE_MODEL, TEXT_MODEL

HELIX = str(Path(sys.executable).parent / "helix")


@pytest.fixture()
def home(tmp_path) -> dict[str, str]:
    """A user's environment with nothing of the server in it: only what `helix login` keeps."""
    env = {k: v for k, v in os.environ.items() if k not in ("HELIX_URL", "HELIX_API_KEY")}
    return {**env, "XDG_CONFIG_HOME": str(tmp_path / "config")}


def helix(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([HELIX, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_login_keeps_the_key_for_its_owner_alone_and_the_commands_use_it(live_server, live_user, home, runner):
    done = helix(home, "login", "--url", live_server, "--key", live_user.key)
    assert done.returncode == 0, done.stderr
    kept = Path(home["XDG_CONFIG_HOME"]) / "helix" / "credentials.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert json.loads(kept.read_text()) == {"url": live_server, "api_key": live_user.key}

    chat = helix(home, "chat", "Tell me about the sea", "--model", TEXT_MODEL, "--max-tokens", "12")
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    session_id = chat.stderr.split("session ", 1)[1].split(":", 1)[0]
    again = helix(home, "chat", "And rivers?", "-s", session_id, "--max-tokens", "6", "--json")
    answer = json.loads(again.stdout)
    assert answer["session_id"] == session_id and answer["reply"]["state"] == "complete"

    listed = json.loads(helix(home, "sessions", "ls", "--json").stdout)
    assert session_id in [s["id"] for s in listed["sessions"]]
    shown = json.loads(helix(home, "sessions", "show", session_id).stdout)
    assert shown["interactions"][1]["message"] == chat.stdout.rstrip("\n")
    assert helix(home, "sessions", "rm", session_id).returncode == 0
    gone = helix(home, "sessions", "show", session_id)
    assert gone.returncode == 1 and gone.stderr.strip() == "helix: session not found" and not gone.stdout


def test_a_wrong_key_is_refused_at_login_with_the_servers_message(live_server, home):
    done = helix(home, "login", "--url", live_server, "--key", "hl-not-a-key")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "API key" in done.stderr, done.stderr
    assert not (Path(home["XDG_CONFIG_HOME"]) / "helix" / "credentials.json").exists()


def test_files_go_up_and_come_back_and_an_image_is_saved(live_server, live_user, home, runner, tmp_path):
    env = {**home, "HELIX_URL": live_server, "HELIX_API_KEY": live_user.key}  # the variables win over login
    notes = tmp_path / "notes.txt"
    notes.write_text("The lighthouse is painted red.")
    put = helix(env, "files", "put", str(notes), "--to", "cli")
    assert put.returncode == 0 and put.stdout.strip() == "cli/notes.txt", put.stderr
    assert "cli/notes.txt" in helix(env, "files", "ls", "cli").stdout
    back = tmp_path / "back.txt"
    assert helix(env, "files", "get", "cli/notes.txt", "-o", str(back)).returncode == 0
    assert back.read_text() == notes.read_text()

    image = helix(env, "image", "a lighthouse", "--model", IMAGE_MODEL, "--seed", "7", "-o", str(tmp_path / "a.png"))
    assert image.returncode == 0, image.stderr
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    used = helix(env, "usage", "--mine", "--json")
    assert used.returncode == 0, used.stderr
    assert json.loads(used.stdout)["totals"]["images"] >= 1  # the image just made
    table = helix(env, "usage", "--mine", "--group-by", "model")
    assert table.returncode == 0 and IMAGE_MODEL in table.stdout and "this month:" in table.stdout, table.stderr


def test_the_finetune_view_shows_stage_progress_pairs_and_loss():
    from rich.console import Console

    assert sparkline([3.0, 2.0, 1.0, 0.5]) == "█▅▂▁"
    view = FinetuneView.__new__(FinetuneView)
    view.uploaded = (2048, 4096)
    view.interaction = {"data_prep_stage": "finetune", "status": "training: step 30/60", "progress": 50,
                        "qa_pairs": [{}] * 12, "training_history": [{"step": s, "loss": 3 / s} for s in range(1, 31)],
                        "data_prep_files": {"a.txt": {"chunks": [
                            {"state": "done", "question_count": 12, "dropped": {"ungrounded": 3}},
                            {"state": "pending"}]}}}
    console = Console(width=100, record=True, color_system=None)
    console.print(view.render())
    shown = console.export_text()
    assert "finetune" in shown and "training: step 30/60" in shown
    assert "12 question/answer pairs kept, 3 dropped by the filters" in shown
    assert "2.0 of 4.0 kB" in shown and "1/2 chunks" in shown
    assert "0.100" in shown and "█" in shown


class Terminal:
    """A command in a tmux pane of its own server (the environment given), read as a person sees
    it: the screen, as capture-pane shows it, every few tenths of a second until it exits."""

    def __init__(self, env: dict[str, str], *command: str, width: int = 120, height: int = 45):
        self.socket = f"helix-test-{os.urandom(4).hex()}"
        shown = " ".join(shlex.quote(part) for part in command)
        subprocess.run(["tmux", "-L", self.socket, "new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                        f"{shown}; echo EXIT=$?; sleep 600"], env=env, check=True)
        self.screens: list[str] = []

    def screen(self) -> str:
        # -J: a line the terminal wrapped comes back whole.
        return subprocess.run(["tmux", "-L", self.socket, "capture-pane", "-p", "-J", "-t", "t"],
                              capture_output=True, text=True, check=True).stdout

    def until_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.screens.append(self.screen())
            found = re.search(r"EXIT=(\d+)", self.screens[-1])
            if found:
                return int(found.group(1))
            time.sleep(0.3)
        raise AssertionError("still running:\n" + self.screens[-1])

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.mark.timeout(600)
def test_a_finetune_watched_in_a_terminal_shows_its_work_and_ends_with_before_and_after(
        live_server, live_user, home, runner, tmp_path):
    from tests.test_finetune_flow import DOCUMENT, _pairs, _system

    env = {**home, "HELIX_URL": live_server, "HELIX_API_KEY": live_user.key, "TERM": "xterm-256color"}
    document = tmp_path / "zorblat.txt"
    document.write_text(DOCUMENT)
    term = Terminal(env, HELIX, "finetune", str(document), "--model", TEXT_MODEL, "--review", "--watch")
    try:
        assert term.until_exit(300) == 0, term.screens[-1]
    finally:
        term.close()
    seen = "\n".join(term.screens)
    # The upload, the stage and a bar per document (its chunks done), the pairs kept and dropped.
    assert re.search(r"upload\s+\S*━", seen) and " kB" in seen, seen[-3000:]
    assert "zorblat.txt" in seen and re.search(r"\d+/\d+ chunks", seen), seen[-3000:]
    assert re.search(r"\d+ question/answer pairs kept, \d+ dropped by the filters", seen), seen[-3000:]
    last = term.screens[-1]
    session_id = re.search(r"session ([0-9a-f-]{36}): editing", last).group(1)
    assert "review its pairs in the web app" in last

    # The pairs written by the reviewer, training started; then followed again from a terminal.
    base = f"{live_server}/api/v1/sessions/{session_id}/finetune"
    system = _system(requests.get(f"{live_server}/api/v1/sessions/{session_id}", headers=live_user.headers).json())
    assert requests.put(f"{base}/text/conversations/{system['id']}", headers=live_user.headers,
                        json=_pairs()).status_code == 200
    assert requests.post(f"{base}/start", headers=live_user.headers).status_code == 200
    term = Terminal(env, HELIX, "watch", session_id)
    try:
        assert term.until_exit(300) == 0, term.screens[-1]
    finally:
        term.close()
    seen = "\n".join(term.screens)
    assert re.search(r"loss\s+[▁▂▃▄▅▆▇█]{2,}\s+\d+\.\d{3}", seen), seen[-3000:]
    last = term.screens[-1]
    # The knowledge report: the four ways side by side, and the one the session's chats use.
    assert "by way, on 3 held-out questions" in last, last
    assert re.search(r"base model\s*┃\s*retrieval\s*┃\s*fine-tuned\s*┃\s*fine-tuned \+ retrieval", last), last
    assert re.search(r"token f1\s*│(\s*\d\.\d\d\s*│){4}", last), last
    assert re.search(r"chats use: (base model|retrieval|fine-tuned|fine-tuned \+ retrieval)", last), last
    assert f'chat with it:  helix chat -s {session_id} "..."' in last, last


@pytest.mark.timeout(300)
def test_a_chat_in_a_terminal_streams_its_reply_as_it_comes(live_server, live_user, home, real_runner):
    from tests.conftest import REAL_TEXT_MODEL

    env = {**home, "HELIX_URL": live_server, "HELIX_API_KEY": live_user.key, "TERM": "xterm-256color"}
    term = Terminal(env, HELIX, "chat", "Tell me a story about a lighthouse.", "--model", REAL_TEXT_MODEL,
                    "--max-tokens", "80", "--temperature", "0")
    try:
        assert term.until_exit(240) == 0, term.screens[-1]
    finally:
        term.close()
    last = term.screens[-1]
    session_id = re.search(r"session ([0-9a-f-]{36}): go on with  helix chat -s \1", last).group(1)
    reply = requests.get(f"{live_server}/api/v1/sessions/{session_id}", headers=live_user.headers,
                         timeout=30).json()["interactions"][-1]["message"]
    # Before the end, the screen held part of the reply: it came as it was made, not at once.
    words = " ".join(reply.split())
    begins, ends = " ".join(reply.split()[:3]), words[-30:]
    partial = [s for s in term.screens if begins in " ".join(s.split()) and ends not in " ".join(s.split())]
    assert partial, (reply, term.screens[-3:])
    assert ends in " ".join(last.split()), (reply, last)
