#!/usr/bin/env bash
# The GPU checks of one device session, on a bare CUDA machine (no network, no platform stack, no
# vLLM): run from the repository root as
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && bash bench/gpu_device.sh
#
# with $OUT an output folder, .whl/ holding the peft==0.21.2 and diffusers==0.42.1 wheels, and
# .helix/models/ holding smollm2-135m-instruct's tokenizer files (tokenizer.json,
# tokenizer_config.json, chat_template.jinja) and tiny-sd. About 5 minutes on an H100:
#   1. nvidia-smi and the versions of python, torch, transformers, peft, accelerate, diffusers;
#   2. GPU-P7 (bench.gpu_figures: runner.training.lora / transformers.Trainer on a random-weight
#      model of Mistral-7B's configuration; GPU-P3 skipped where vLLM is not installed):
#      $OUT/gpu_figures.json, as bench/run.py writes figures;
#   3. the image LoRA trainer on CUDA along SDXL's float16 path, on a tiny SDXL-shaped pipeline,
#      and one image with its adapter (bench.gpu_image_lora): $OUT/image_lora.json, .png.
# Everything printed goes to $OUT/gpu_device.log as it happens. Each step has its own time limit
# and a failed step does not stop the next.
#
# GPU_DEVICE_CPU_DRY_RUN=1 runs the same steps on a CPU with tiny inputs (a check of the script,
# not figures to quote).
set -u -o pipefail
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export TMPDIR=/tmp HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
P7_ARGS=(--rows 400 --epochs 2)
IMAGE_ARGS=(--steps 40 --device cuda)
P7_LIMIT=280
if [ "${GPU_DEVICE_CPU_DRY_RUN:-}" = 1 ]; then
    P7_ARGS=(--rows 8 --epochs 1 --cpu-dry-run)
    IMAGE_ARGS=(--steps 8 --device cpu)
    P7_LIMIT=600
fi

{
    started=$SECONDS
    echo "== 1. machine and versions ($(date -u +%FT%TZ))"
    nvidia-smi || echo "nvidia-smi failed: rc=$?"
    python3 --version
    echo "PYTHONPATH=${PYTHONPATH:-}"
    python3 - <<'PY'
import importlib
for name in ("torch", "transformers", "peft", "accelerate", "diffusers", "safetensors", "huggingface_hub"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {module.__version__} ({module.__file__})")
    except Exception as err:  # noqa: BLE001
        print(f"{name} NOT IMPORTABLE: {type(err).__name__}: {err}")
import importlib.util
print("vllm", "present" if importlib.util.find_spec("vllm") else "not installed")
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
PY
    df -h /tmp | tail -1

    echo "== 2. GPU-P3 / GPU-P7 (bench.gpu_figures ${P7_ARGS[*]}, limit ${P7_LIMIT}s; $((SECONDS - started))s so far)"
    timeout -k 15 "$P7_LIMIT" python3 -m bench.gpu_figures --out "$OUT/gpu_figures.json" "${P7_ARGS[@]}"
    echo "gpu_figures rc=$? after $((SECONDS - started))s"

    echo "== 3. image LoRA on ${IMAGE_ARGS[*]} (bench.gpu_image_lora, limit 90s)"
    timeout -k 10 90 python3 -m bench.gpu_image_lora --out "$OUT/image_lora.json" --image "$OUT/image_lora.png" \
        "${IMAGE_ARGS[@]}"
    echo "gpu_image_lora rc=$? after $((SECONDS - started))s"
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
    echo "== done in $((SECONDS - started))s"
} 2>&1 | tee "$OUT/gpu_device.log"
