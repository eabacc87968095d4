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
    (["psycopg", "psycopg_pool", "flask", "controlplane"],
     ["runner.supervisor", "runner.worker", "runner.jobs", "runner.control_plane", "shared.jobs",
      "runner.training.image_job", "runner.image_adapters", "runner.state_report", "runner.metrics",
      "shared.logs", "shared.runner_state"]),
    (["torch", "diffusers", "transformers", "peft", "vllm", "runner"],
     ["controlplane.app", "controlplane.cli", "controlplane.devstack", "controlplane.reconciler",
      "controlplane.image_finetune_service", "controlplane.metrics", "controlplane.api.dashboard",
      "controlplane.gunicorn_hooks"]),
])
def test_each_side_imports_without_the_other(blocked, modules):
    result = imports_without(blocked, modules)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_check_itself_catches_a_forbidden_import():
    assert imports_without(["psycopg"], ["controlplane.db"]).returncode != 0
