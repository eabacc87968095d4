"""The layer rules hold at import time: a runner-only install never needs psycopg or Flask, and a
control-plane-only install never needs torch or the runner."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


def imports_without(blocked: list[str], modules: list[str]) -> subprocess.CompletedProcess:
    code = "import sys\n" + "".join(f"sys.modules[{b!r}] = None\n" for b in blocked) + \
        "".join(f"import {m}\n" for m in modules)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("blocked, modules", [
    (["psycopg", "psycopg_pool", "flask", "controlplane", "model_setup"],  # nor the build-time model tools
     ["runner.supervisor", "runner.worker", "runner.jobs", "runner.control_plane.client", "shared.jobs",
      "runner.dataprep.job", "runner.training.job",
      "runner.training.image_job", "runner.images.adapters", "runner.state.report", "runner.state.metrics",
      "shared.logs", "shared.runner_state"]),
    (["torch", "diffusers", "transformers", "peft", "vllm", "runner"],
     ["controlplane.app", "controlplane.cli", "controlplane.devstack.stack", "controlplane.runners.reconciler",
      "controlplane.finetune.image_service", "controlplane.metrics", "controlplane.api.dashboard",
      "controlplane.http.gunicorn_hooks"]),
])
def test_each_side_imports_without_the_other(blocked, modules):
    result = imports_without(blocked, modules)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_check_itself_catches_a_forbidden_import():
    assert imports_without(["psycopg"], ["controlplane.storage.db"]).returncode != 0


# The control plane's rooms, lowest first: a module imports only from its own room and the rooms
# below it. So fleet never imports the sessions service, sessions never import fine-tuning, the
# OpenAI API uses the services and never the routes, and only the app and the CLI see everything.
CONTROL_PLANE_LAYERS = [
    {"errors", "config"},
    {"http"},                  # request plumbing: fields, bodies, context, error handlers, gunicorn
    {"storage"},               # PostgreSQL, migrations, the filestore
    {"usage"},                 # plans and the limits held at the door
    {"knowledge"},             # documents' chunks to retrieve; the way a session learns from them
    {"accounts", "fleet"},     # who is asking; where work goes
    {"sessions"},
    {"contract"},              # what each route reads and answers; the OpenAPI document built from it
    {"metrics"},               # counts what the sessions' store holds; read by the runners' reconciler
    {"finetune", "runners", "erasure", "backups"},  # erasure: a user deleted for good
    {"openai"},
    {"api", "web"},            # thin routes
    {"app", "devstack"},
    {"cli"},
]


def _control_plane_imports() -> dict[str, set[str]]:
    """Each control-plane module (dotted) and the control-plane modules or packages it imports,
    wherever in the module the import stands."""
    import ast

    found = {}
    for path in (REPO / "controlplane").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        imports = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "controlplane":
                imports.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imports.update(a.name for a in node.names if a.name.split(".")[0] == "controlplane")
        found[name] = imports
    return found


def _room(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "controlplane"


def _upward(modules: dict[str, set[str]]) -> list[str]:
    rank = {room: i for i, rooms in enumerate(CONTROL_PLANE_LAYERS) for room in rooms}
    return sorted(f"{module} imports {target}" for module, targets in modules.items() for target in targets
                  if _room(target) != _room(module) and rank.get(_room(target), -1) >= rank.get(_room(module), -1))


def test_control_plane_modules_import_only_their_own_room_and_those_below():
    modules = _control_plane_imports()
    known = {room for rooms in CONTROL_PLANE_LAYERS for room in rooms} | {"controlplane"}
    unknown = sorted({_room(m) for m in modules} - known)
    assert not unknown, f"rooms not in CONTROL_PLANE_LAYERS: {unknown}"
    upward = _upward(modules)
    assert not upward, "imports from the same or a higher room:\n" + "\n".join(upward)


def test_the_room_check_catches_imports_upward_and_sideways():
    assert _upward({"controlplane.fleet.dispatch": {"controlplane.sessions.service.SessionService"}})
    assert _upward({"controlplane.sessions.service": {"controlplane.finetune.text_service.FinetuneService"}})
    assert _upward({"controlplane.accounts.auth": {"controlplane.fleet.scheduling"}})  # side by side
    assert not _upward({"controlplane.openai.chat": {"controlplane.sessions.service.SessionService",
                                                     "controlplane.openai.input.ChatRequest"}})


@pytest.mark.parametrize("package", ["controlplane", "runner"])
def test_each_side_has_few_modules_at_its_top_and_none_too_long(package):
    top = sorted(p.name for p in (REPO / package).glob("*.py"))
    assert len(top) <= 10, top
    long = sorted(f"{p.relative_to(REPO)}: {n} lines" for p in (REPO / package).rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > 600)
    assert not long, long
