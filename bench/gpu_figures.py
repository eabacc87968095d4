"""GPU variant of P3 and P7, run only where CUDA is present: a model of Mistral-7B's configuration
with random weights, built on the spot (decoding speed does not depend on the weight values), with
the default model's tokenizer (so its vocabulary, 49,152 tokens, not Mistral's 32,768).

  GPU-P3  the platform (its own stack, the runner serving the random model) with N concurrent
          sessions watched over their events streams / the same requests straight to its vLLM;
          beside it one stream's tokens/s and the card's memory-bandwidth bound for one stream
          (bandwidth / bytes of weights: every decoded token reads every weight once) and for N
          streams (N times that, less the KV cache reads it ignores).
  GPU-P7  runner.training.lora / transformers.Trainer on the random model, as P7.

Where no CUDA device is present, one figure says so and is skipped (neither pass nor fail).
"""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import Figure, spread
from bench.stack import REPO, BenchStack, models_dir
from shared.processes import die_with_parent

# Peak memory bandwidth (bytes/s) of cards, by a part of the name torch reports.
BANDWIDTH = [("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
             ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12),
             ("L40S", 0.864e12), ("L40", 0.864e12), ("A10G", 0.6e12), ("A10", 0.6e12), ("L4", 0.3e12)]
MISTRAL_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1e6,
                  sliding_window=None, tie_word_embeddings=False)


def bandwidth(name: str) -> float | None:
    return next((bw for part, bw in BANDWIDTH if part in name), None)


def build_random_mistral(into: Path) -> int:
    """Saves the model (bf16) with the default model's tokenizer files; returns its bytes of weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig

    source = models_dir() / "smollm2-135m-instruct"
    into.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and ("token" in f.name or f.suffix == ".jinja"):
            shutil.copy(f, into / f.name)
    tokenizer = AutoTokenizer.from_pretrained(into)
    config = MistralConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, **MISTRAL_7B)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(into)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    return size


def measure(stack: BenchStack | None, figure: Figure, *, sessions: int, tokens: int, rows: int, epochs: int,
            shared: dict, **_) -> None:
    import torch

    if not torch.cuda.is_available():
        figure.passed = None
        figure.notes.append("no CUDA device on this machine: GPU-P3 and GPU-P7 skipped")
        figure.result = {"skipped": "no CUDA device"}
        return
    from bench.chat_throughput import _batch, _direct_one, direct_run, platform_run, prompts
    from bench.finetune_training import hyperparameters, run_trainer, trained_tokens, training_rows

    card = torch.cuda.get_device_name()
    bw = bandwidth(card)
    figure.name = "GPU-P3"
    figure.model = "Mistral-7B configuration, random weights, bf16"
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "mistral-7b-random"
        started = time.monotonic()
        weight_bytes = build_random_mistral(model_dir)
        figure.inputs = {"sessions": sessions, "concurrency": sessions, "tokens": tokens, "repetitions": 1,
                         "card": card, "weights_gb": round(weight_bytes / 1e9, 2),
                         "built_in_s": round(time.monotonic() - started, 1)}
        name = "bench/mistral-7b-random"
        with BenchStack(name, model_dir) as gpu_stack:
            vllm = gpu_stack.runner()
            direct_run(gpu_stack, name, prompts(4), 8, 300)  # warm-up
            wall, results = asyncio.run(_batch(lambda http, i: _direct_one(http, vllm, name, "Tell me a story.", tokens),
                                               1, 300))
            one_stream = results[0]["tokens"] / wall
            wall, made = direct_run(gpu_stack, name, prompts(sessions), tokens, timeout=900)
            direct = made / wall
            run = platform_run(gpu_stack, name, prompts(sessions), tokens, timeout=3 * wall + 120)
        figure.baseline = spread([direct], "tokens/s vLLM direct", 1)
        figure.result = {"one_stream_tokens_per_s": round(one_stream, 1)}
        if bw:
            figure.result.update(bandwidth_bound_one_stream=round(bw / weight_bytes, 1),
                                 bandwidth_bound_all_streams=round(sessions * bw / weight_bytes, 1),
                                 one_stream_share_of_bound=round(one_stream / (bw / weight_bytes), 3))
        else:
            figure.notes.append(f"memory bandwidth of {card!r} unknown: add it to BANDWIDTH")
        if "failures" in run:
            figure.error = f"{run['sessions'] - run['finished']} of {run['sessions']} sessions did not finish: " \
                           + json.dumps(run["failures"])[:400]
        else:
            figure.platform = spread([run["tokens_per_s"]], "tokens/s platform", 1)
            figure.result["ratio"] = round(run["tokens_per_s"] / direct, 3)
        figure.judge("ratio" in figure.result and figure.result["ratio"] >= 0.8)

        # GPU-P7 goes into the same list through `shared`: the driver reports it after this one.
        p7 = Figure("GPU-P7", "fine-tune trained tokens/s (runner.training.lora) / transformers.Trainer, on CUDA",
                    ">= 1.0", model=figure.model)
        data = training_rows(rows)
        hp = hyperparameters(epochs, 4)
        p7.inputs = {"rows": rows, "epochs": epochs, "repetitions": 1, "card": card, "batch_size": 4}
        try:
            (Path(tmp) / "ours").mkdir()
            done = run_trainer(model_dir, data, hp, Path(tmp) / "ours")
            ours = trained_tokens(model_dir, data) * epochs / done["seconds"]
            spec = {"model_path": str(model_dir), "output_dir": str(Path(tmp) / "hf"), "train": data,
                    "hyperparameters": hp, "seed": 0}
            (Path(tmp) / "hf.json").write_text(json.dumps(spec))
            out = subprocess.run([sys.executable, "-m", "bench.hf_baselines", "trainer", str(Path(tmp) / "hf.json")],
                                 cwd=REPO, capture_output=True, text=True, preexec_fn=die_with_parent(), timeout=1800)
            if out.returncode:
                raise RuntimeError(f"Trainer baseline failed: {out.stderr[-1500:]}")
            theirs = json.loads(out.stdout.strip().splitlines()[-1])
            hf = theirs["tokens"] / theirs["seconds"]
            p7.platform = spread([ours], "tokens/s", 1)
            p7.baseline = spread([hf], "tokens/s", 1)
            p7.result = {"ratio": round(ours / hf, 3)}
            p7.judge(ours / hf >= 1.0)
        except Exception as err:  # noqa: BLE001 - reported, as any figure's failure
            p7.error, p7.passed = f"{type(err).__name__}: {err}"[:800], False
        shared.setdefault("extra_figures", []).append(p7)
