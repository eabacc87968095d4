"""P4-P7: the fine-tune path's figures, on the runner's own vLLM server (LoRA enabled, warm) and
the runner's own components called directly, each ratio's two sides in the same run.

P4  question generation (runner.dataprep.questions.QuestionWriter, as the data-preparation job
    calls it) for N chunks of one fact each: one request at a time (s) / all at once, at most
    HELIX_QA_CONCURRENCY in flight (s). Seeded per fact, so both sides write the same questions.
P5  first chat on a fresh adapter (runner.text.adapters.load, then a chat on it) / the same chat on the
    warm base model. The adapter is a LoRA (rank 16, all linear layers) of the model with random
    weights in both its matrices, saved by peft, as a fine-tune leaves one; its download from the
    control plane is not part of the figure.
P6  tokens/s of C concurrent chats on a loaded adapter / the same on the base model.
P7  trained tokens/s of runner.training.lora (the fine-tune worker's trainer, in its own process)
    / a plain transformers.Trainer with the same rows, LoRA settings, optimizer and epochs
    (bench/hf_baselines.py trainer), both timing their training loop only.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.chat_throughput import direct_run, prompts
from bench.report import Figure, ratio_result, spread
from bench.stack import REPO, SAMPLING_EXTRA, BenchStack, models_dir
from shared.processes import die_with_parent

PLACES = ["library", "harbour", "observatory", "bakery", "museum", "bridge", "school", "theatre"]
PEOPLE = ["Mira Tessel", "Oren Vask", "Lina Dorr", "Teo Marsh", "Ada Quill", "Ivo Renn", "Sela Brook", "Kai Lunt"]


def facts(n: int) -> list[str]:
    """Invented facts, one per chunk: nothing the model can answer from memory."""
    return [f"The {PLACES[i % 8]} of Kelvar-{i} was founded in {1700 + 7 * i} by {PEOPLE[(i * 3) % 8]}, "
            f"a cartographer who lived on the island for {10 + i % 30} years." for i in range(n)]


def measure_p4(stack: BenchStack, figure: Figure, *, chunks: int, model: str, **_) -> None:
    from runner.config import RunnerConfig
    from runner.dataprep.job import QUESTIONS_PER_REQUEST
    from runner.dataprep.questions import GenerationError, QuestionWriter
    from shared.finetune import DEFAULT_QUESTION_STYLES

    vllm = stack.runner()
    concurrency = RunnerConfig.__dataclass_fields__["qa_concurrency"].default
    style = list(DEFAULT_QUESTION_STYLES)[0]
    writer = QuestionWriter(vllm, model)
    texts = facts(chunks)
    figure.model = model
    figure.inputs = {"chunks": chunks, "concurrency": min(concurrency, chunks), "repetitions": 1,
                     "per_chunk": f"1 fact, style {style!r}, {QUESTIONS_PER_REQUEST} questions per request",
                     "writer": "runner.dataprep.questions.QuestionWriter (JSON schema output)"}
    errors = []

    def ask(fact: str) -> None:
        try:
            writer.write(fact, fact, "bench.txt", style, QUESTIONS_PER_REQUEST)
        except GenerationError as err:
            errors.append(str(err))

    ask(facts(1)[0] + " (warm-up)")
    started = time.monotonic()
    for fact in texts:
        ask(fact)
    one_at_a_time = time.monotonic() - started
    started = time.monotonic()
    with ThreadPoolExecutor(min(concurrency, chunks)) as pool:
        list(pool.map(ask, texts))
    concurrent = time.monotonic() - started
    if errors:
        figure.notes.append(f"{len(errors)} requests failed, first: {errors[0][:200]}")
    figure.platform = spread([concurrent], "s concurrent", 2)
    figure.baseline = spread([one_at_a_time], "s one at a time", 2)
    figure.result = {"ratio": round(one_at_a_time / concurrent, 3), "requests": 2 * chunks, "failed": len(errors)}
    figure.judge(figure.result["ratio"] >= 5 and not errors)


def adapter_template(stack: BenchStack, shared: dict) -> Path:
    """A LoRA adapter of the text model as peft saves one after training (made once per run)."""
    if "adapter" not in shared:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(stack.text_model_path, dtype=torch.float32)
        lora = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                               target_modules="all-linear", task_type="CAUSAL_LM"))
        with torch.no_grad():  # B as training leaves it, not peft's zeros (which a server could skip)
            for name, param in lora.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.01)
        folder = stack.work / "adapter-template"
        lora.save_pretrained(folder)
        shared["adapter"] = folder
    return shared["adapter"]


def _chat(http: requests.Session, vllm: str, model: str, tokens: int) -> None:
    r = http.post(f"{vllm}/v1/chat/completions", timeout=300, json={
        "model": model, "messages": [{"role": "user", "content": "Who founded the Kelvar library?"}],
        "max_tokens": tokens, **SAMPLING_EXTRA})
    r.raise_for_status()


def _fresh_adapter(stack: BenchStack, shared: dict) -> tuple[str, Path]:
    name = f"bench-{uuid.uuid4().hex[:12]}"
    folder = stack.work / "adapters" / name
    shutil.copytree(adapter_template(stack, shared), folder)
    return name, folder


def measure_p5(stack: BenchStack, figure: Figure, *, tokens: int, repetitions: int, model: str, shared: dict,
               **_) -> None:
    from runner.text import adapters

    vllm = stack.runner()
    http = requests.Session()
    adapter_template(stack, shared)
    figure.model = model
    figure.inputs = {"tokens": tokens, "repetitions": repetitions, "adapter": "LoRA r=16, all linear layers",
                     "fresh": "runner.text.adapters.load + first chat; download from the control plane not included"}
    for _ in range(2):
        _chat(http, vllm, model, tokens)
    warm, fresh, loads = [], [], []
    for _ in range(repetitions):
        started = time.monotonic()
        _chat(http, vllm, model, tokens)
        warm.append(time.monotonic() - started)
        name, folder = _fresh_adapter(stack, shared)
        started = time.monotonic()
        adapters.load(vllm, name, folder, http)
        loads.append(time.monotonic() - started)
        _chat(http, vllm, name, tokens)
        fresh.append(time.monotonic() - started)
    figure.platform = spread([s * 1000 for s in fresh], "ms fresh adapter", 1)
    figure.baseline = spread([s * 1000 for s in warm], "ms warm base", 1)
    figure.result = ratio_result(fresh, warm)
    # Where the time goes: loading the adapter, or its first reply (slower than the base's, see P6).
    figure.result["adapter_load_ms"] = spread([s * 1000 for s in loads], "ms", 1)["median"]
    figure.judge(figure.result["ratio"] <= 1.5)


def measure_p6(stack: BenchStack, figure: Figure, *, concurrency: int, tokens: int, repetitions: int, model: str,
               shared: dict, **_) -> None:
    from runner.text import adapters

    vllm = stack.runner()
    name, folder = _fresh_adapter(stack, shared)
    adapters.load(vllm, name, folder)
    texts = prompts(concurrency)
    figure.model = model
    figure.inputs = {"concurrency": concurrency, "tokens": tokens, "repetitions": repetitions,
                     "adapter": "LoRA r=16, all linear layers, loaded", "path": "runner's vLLM server, streamed"}
    direct_run(stack, name, prompts(2), 8, 120)  # warm-up
    base, lora = [], []
    for _ in range(repetitions):
        wall, made = direct_run(stack, model, texts, tokens, timeout=600)
        base.append(made / wall)
        wall, made = direct_run(stack, name, texts, tokens, timeout=600)
        lora.append(made / wall)
    figure.platform = spread(lora, "tokens/s LoRA", 1)
    figure.baseline = spread(base, "tokens/s base", 1)
    figure.result = ratio_result(lora, base)
    figure.judge(figure.result["ratio"] >= 0.7)


def measure_p7(stack: BenchStack | None, figure: Figure, *, rows: int, epochs: int, model: str,
               repetitions: int = 1, **_) -> None:
    from bench.finetune_training import hyperparameters, run_trainer, trained_tokens, training_rows

    model_path = models_dir() / model.split("/")[-1]
    data = training_rows(rows)
    hp = hyperparameters(epochs, 4)
    figure.model = model
    figure.inputs = {"rows": rows, "epochs": epochs, "repetitions": repetitions, "batch_size": hp["batch_size"],
                     "lora": f"r={hp['lora_rank']}, alpha={hp['lora_alpha']}, all linear layers, lr {hp['learning_rate']}",
                     "baseline": "transformers.Trainer (bench/hf_baselines.py trainer), alternating with ours"}
    tokens = trained_tokens(model_path, data) * epochs
    ours, theirs = [], []
    for rep in range(repetitions):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "ours").mkdir()
            done = run_trainer(model_path, data, hp, tmp / "ours")
            ours.append(tokens / done["seconds"])
            spec = {"model_path": str(model_path), "output_dir": str(tmp / "hf"), "train": data,
                    "hyperparameters": hp, "seed": 0}
            (tmp / "hf.json").write_text(json.dumps(spec))
            out = subprocess.run([sys.executable, "-m", "bench.hf_baselines", "trainer", str(tmp / "hf.json")],
                                 cwd=REPO, capture_output=True, text=True, preexec_fn=die_with_parent(), timeout=1800)
            if out.returncode:
                raise RuntimeError(f"Trainer baseline failed: {out.stderr[-1500:]}")
            hf = json.loads(out.stdout.strip().splitlines()[-1])
            theirs.append(hf["tokens"] / hf["seconds"])
            figure.inputs["dtype"] = hf["dtype"]
    figure.platform = spread(ours, "tokens/s", 1)
    figure.baseline = spread(theirs, "tokens/s", 1)
    figure.result = {**ratio_result(ours, theirs), "steps": {"ours": done["steps"], "trainer": hf["steps"]}}
    figure.judge(figure.result["ratio"] >= 1.5)
