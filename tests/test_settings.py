"""Settings from the environment: documented defaults, and a bad value named in one clear line."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from controlplane.config import Config
from runner.config import RunnerConfig
from tests.conftest import REPO

RUNNER_ENV = {"HELIX_API_URL": "http://cp:8080/", "HELIX_RUNNER_TOKEN": "hr-x", "REDIS_URL": "redis://r"}


def test_defaults_and_overrides():
    assert Config.from_env({}).max_event_streams == 12_000
    d = Config.from_env({})
    assert (d.max_event_streams_per_user, d.max_runner_models, d.max_runners_per_token, d.runner_ttl) == (1000, 16, 64, 300)
    c = Config.from_env({"HELIX_MAX_EVENT_STREAMS_PER_USER": "2", "HELIX_MAX_RUNNER_MODELS": "3",
                         "HELIX_MAX_RUNNERS_PER_TOKEN": "5", "HELIX_RUNNER_TTL": "60"})
    assert (c.max_event_streams_per_user, c.max_runner_models, c.max_runners_per_token, c.runner_ttl) == (2, 3, 5, 60)
    c = Config.from_env({"HELIX_MAX_EVENT_STREAMS": "3", "HELIX_RECONCILE_INTERVAL": "0.5",
                         "HELIX_TEXT_MODELS": "a, b"})
    assert (c.max_event_streams, c.reconcile_interval, c.text_models) == (3, 0.5, ["a", "b"])
    assert (d.openai_reply_seconds, Config.from_env({"HELIX_OPENAI_REPLY_SECONDS": "30"}).openai_reply_seconds) == (600, 30)
    r = RunnerConfig.from_env({**RUNNER_ENV, "HELIX_SAMPLING_EXTRA": '{"top_k": 5}'})
    assert (r.api_url, r.text_workers, r.sampling_extra) == ("http://cp:8080", 128, {"top_k": 5})
    assert (r.delta_interval, r.persist_interval) == (0.1, 30.0)
    # A runner started alone keeps its files in its installation's state folder, one folder per runner id.
    state = tempfile.mkdtemp()
    for env, folder in (({"HELIX_RUNNER_ID": "a/b"}, ".helix/runner-work/a_b"),
                        ({"HELIX_RUNNER_ID": "a", "HELIX_STATE_DIR": state}, f"{state}/runner-work/a"),
                        ({"HELIX_RUNNER_WORK_DIR": "/w"}, "/w")):
        assert RunnerConfig.from_env({**RUNNER_ENV, **env}).work_dir == os.path.abspath(folder)
    assert Config.from_env({}).deleted_user_usage == "delete"


@pytest.mark.parametrize("build, env, fragment", [
    (Config.from_env, {"HELIX_MAX_UPLOAD_BYTES": "10MB"}, "HELIX_MAX_UPLOAD_BYTES must be a whole number"),
    (Config.from_env, {"HELIX_RECONCILE_INTERVAL": "soon"}, "HELIX_RECONCILE_INTERVAL must be a number"),
    (Config.from_env, {"HELIX_MAX_NAME_BYTES": "300"}, "HELIX_MAX_NAME_BYTES must be between 1 and 255"),
    (Config.from_env, {"HELIX_OPENAI_REPLY_SECONDS": "0"}, "HELIX_OPENAI_REPLY_SECONDS must be from 1 to 86400"),
    (Config.from_env, {"HELIX_PRICES": "{cheap"}, "HELIX_PRICES must be JSON"),
    (Config.from_env, {"HELIX_DELETED_USER_USAGE": "keep"}, "HELIX_DELETED_USER_USAGE must be delete or anonymise"),
    (Config.from_env, {"HELIX_PRICES": '{"*": {"tokens": 1}}'}, "unknown unit 'tokens'"),
    (Config.from_env, {"HELIX_PRICES": '{"*": {"images": -1}}'}, "must be a number of credits from 0"),
    (Config.from_env, {"HELIX_USAGE_WEBHOOK_URL": "ftp://billing"}, "HELIX_USAGE_WEBHOOK_URL must be an http(s) URL"),
    (Config.from_env, {"HELIX_USAGE_WEBHOOK_URL": "https://billing.example"}, "HELIX_USAGE_WEBHOOK_SECRET must be set"),
    (RunnerConfig.from_env, {**RUNNER_ENV, "HELIX_TEXT_WORKERS": "many"}, "HELIX_TEXT_WORKERS must be"),
    (RunnerConfig.from_env, {**RUNNER_ENV, "HELIX_SAMPLING_EXTRA": "{bad"}, "HELIX_SAMPLING_EXTRA must be a JSON object"),
    (RunnerConfig.from_env, {**RUNNER_ENV, "HELIX_SAMPLING_EXTRA": "[1]"}, "HELIX_SAMPLING_EXTRA must be a JSON object"),
    (RunnerConfig.from_env, {"HELIX_API_URL": "http://cp"}, "HELIX_RUNNER_TOKEN, REDIS_URL"),
])
def test_bad_settings_stop_with_the_variable_named(build, env, fragment):
    with pytest.raises(SystemExit) as stopped:
        build(env)
    assert fragment in str(stopped.value)


def test_the_cli_says_which_variable_is_wrong():
    result = subprocess.run([sys.executable, "-m", "controlplane.cli", "up", "--no-runner"], cwd=REPO,
                            env={"HELIX_PORT": "eighty", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert result.returncode == 1
    assert "HELIX_PORT must be a whole number, got 'eighty'" in result.stderr
    assert "Traceback" not in result.stderr
