"""GPU variant of P3 and P7, run only where CUDA is present: a model of Mistral-7B's configuration
with random weights, built on the spot (decoding speed does not depend on the weight values), with
the default model's tokenizer (so its vocabulary, 49,152 tokens, not Mistral's 32,768).

  GPU-P3  the platform (its own stack, the runner serving the random model) with N concurrent
          sessions watched over their events streams / the same requests straight to its vLLM;
          beside it one stream's tokens/s and the card's memory-bandwidth bound for one stream
          (bandwidth / bytes of weights: every decoded token reads every weight once) and for N
          streams (N times that, less the KV cache reads it ignores).
  GPU-P7  runner.training.lora / transformers.Trainer on the random model, as P7.

Where no CUDA device is present, one figure says so and is skipped (neither pass nor fail); where
vLLM is not installed (a bare GPU machine), GPU-P3 is skipped and GPU-P7 still runs.

Without the platform's stack (no PostgreSQL, Valkey or control plane needed for GPU-P7):

    python3 -m bench.gpu_figures --out FIGURES.json [--rows 400] [--epochs 2] [--cpu-dry-run]

--cpu-dry-run checks the harness on a CPU with a tiny Mistral-shaped model (not a figure to quote).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.paths import REPO, models_dir
from bench.report import Figure, run_figure, spread, table, write_json
from shared.processes import die_with_parent

if TYPE_CHECKING:
    from bench.stack import BenchStack

# Peak memory bandwidth (bytes/s) of cards, by a part of the name torch reports.
BANDWIDTH = [("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
             ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12),
             ("L40S", 0.864e12), ("L40", 0.864e12), ("A10G", 0.6e12), ("A10", 0.6e12), ("L4", 0.3e12)]
MISTRAL_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1e6,
                  sliding_window=None, tie_word_embeddings=False)
# --cpu-dry-run: the same code on a CPU, with a model small enough to train there in seconds.
TINY_MISTRAL = dict(MISTRAL_7B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2)
CPU_DRY_RUN = False
MEASURES = ("on CUDA: P3 and P7 on a random-weight model of Mistral-7B's configuration, beside the card's"
            " memory-bandwidth bound")  # as bench/run.py's GPU plan says


def _say(message: str) -> None:
    """Progress on stderr: a run on a remote machine that is cut short still shows how far it got."""
    print(f"[gpu_figures {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def vllm_missing() -> str:
    """Why GPU-P3 cannot run on this machine, or "" where it can."""
    try:
        import vllm  # noqa: F401
    except Exception as err:  # noqa: BLE001 - ImportError, or a vLLM that does not load
        return f"vLLM is not installed on this machine ({type(err).__name__}: {str(err)[:200]}): GPU-P3 skipped"
    return ""


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
                           eos_token_id=tokenizer.eos_token_id, **(TINY_MISTRAL if CPU_DRY_RUN else MISTRAL_7B))
    with torch.device("cpu" if CPU_DRY_RUN else "cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if CPU_DRY_RUN else torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(into)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return size


def measure(stack: BenchStack | None, figure: Figure, *, sessions: int, tokens: int, rows: int, epochs: int,
            shared: dict, **_) -> None:
    import torch

    if not torch.cuda.is_available() and not CPU_DRY_RUN:
        figure.passed = None
        figure.notes.append("no CUDA device on this machine: GPU-P3 and GPU-P7 skipped")
        figure.result = {"skipped": "no CUDA device"}
        return
    card = "cpu (dry run)" if CPU_DRY_RUN else torch.cuda.get_device_name()
    figure.name = "GPU-P3"
    figure.model = ("tiny Mistral-shaped model, random weights, float32 (CPU dry run)" if CPU_DRY_RUN
                    else "Mistral-7B configuration, random weights, bf16")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "mistral-7b-random"
        started = time.monotonic()
        _say(f"building the random model on {card} in {model_dir}")
        weight_bytes = build_random_mistral(model_dir)
        figure.inputs = {"sessions": sessions, "concurrency": sessions, "tokens": tokens, "repetitions": 1,
                         "card": card, "weights_gb": round(weight_bytes / 1e9, 2),
                         "built_in_s": round(time.monotonic() - started, 1)}
        _say(f"built ({figure.inputs['weights_gb']} GB of weights) in {figure.inputs['built_in_s']}s")
        why_not = vllm_missing()
        if why_not:
            figure.passed = None
            figure.notes.append(why_not)
            figure.result = {"skipped": "vLLM not installed"}
            _say(why_not)
        else:
            try:
                _p3(figure, model_dir, card, weight_bytes, sessions, tokens)
            except Exception as err:  # noqa: BLE001 - P3's failure is its result; P7 still runs
                figure.error, figure.passed = f"{type(err).__name__}: {err}"[:800], False

        # GPU-P7 goes into the same list through `shared`: the driver reports it after this one.
        shared.setdefault("extra_figures", []).append(_p7(figure.model, model_dir, Path(tmp), card, rows, epochs))


def _p3(figure: Figure, model_dir: Path, card: str, weight_bytes: int, sessions: int, tokens: int) -> None:
    from bench.chat_throughput import _batch, _direct_one, direct_run, platform_run, prompts
    from bench.stack import BenchStack

    bw = bandwidth(card)
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


def _p7(model: str, model_dir: Path, tmp: Path, card: str, rows: int, epochs: int) -> Figure:
    from bench.finetune_training import hyperparameters, run_trainer, trained_tokens, training_rows

    started = time.monotonic()
    p7 = Figure("GPU-P7", "fine-tune trained tokens/s (runner.training.lora) / transformers.Trainer, on CUDA",
                ">= 1.0", model=model)
    data = training_rows(rows)
    hp = hyperparameters(epochs, 4)
    p7.inputs = {"rows": rows, "epochs": epochs, "repetitions": 1, "card": card, "batch_size": 4}
    try:
        (Path(tmp) / "ours").mkdir()
        _say(f"GPU-P7: runner.training.lora, {rows} rows x {epochs} epochs, batch 4")
        done = run_trainer(model_dir, data, hp, Path(tmp) / "ours")
        ours = trained_tokens(model_dir, data) * epochs / done["seconds"]
        _say(f"GPU-P7: ours {done['steps']} steps in {done['seconds']}s, {ours:.0f} tokens/s; now transformers.Trainer")
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
        p7.result = {"ratio": round(ours / hf, 3), "steps": done["steps"], "seconds_ours": done["seconds"],
                     "seconds_trainer": round(theirs["seconds"], 2)}
        p7.judge(ours / hf >= 1.0)
        _say(f"GPU-P7: Trainer {theirs['steps']} steps in {theirs['seconds']:.1f}s, {hf:.0f} tokens/s: "
             f"ratio {ours / hf:.3f}")
    except Exception as err:  # noqa: BLE001 - reported, as any figure's failure
        p7.error, p7.passed = f"{type(err).__name__}: {err}"[:800], False
        _say(f"GPU-P7 failed: {p7.error}")
    p7.seconds = round(time.monotonic() - started, 1)
    return p7


def main(argv: list[str] | None = None) -> int:
    """GPU-P3 and GPU-P7 without bench/run.py (which starts the platform's stack): the figures'
    JSON as bench/run.py writes it, and their table on stdout."""
    global CPU_DRY_RUN
    p = argparse.ArgumentParser(description="GPU-P3 and GPU-P7 without the platform's stack")
    p.add_argument("--out", type=Path, required=True, help="the figures' JSON file")
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="a tiny Mistral-shaped model on a CPU: checks the harness, not a figure to quote")
    args = p.parse_args(argv)
    CPU_DRY_RUN = args.cpu_dry_run
    shared: dict = {}
    figure = run_figure("GPU", MEASURES, "reported", lambda f: measure(
        None, f, sessions=args.sessions, tokens=args.tokens, rows=args.rows, epochs=args.epochs, shared=shared))
    figures = [figure, *shared.pop("extra_figures", [])]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, figures, sys.argv)
    print(table(figures), flush=True)
    print(f"written: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
