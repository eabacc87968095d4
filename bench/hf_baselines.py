"""Plain Hugging Face baselines, each run in a child process of the bench (its own memory, its
own torch threads), printing one JSON line:

    python -m bench.hf_baselines generate --model DIR --prompts PROMPTS.json --tokens N
        P3b: the prompts one after another with `generate`, each reply exactly N new tokens,
        sampled with the model's own generation config (as vLLM samples by default).
    python -m bench.hf_baselines trainer SPEC.json
        P7: a `transformers.Trainer` on the rows and LoRA settings of a runner.training.lora spec.

What a user would write without the platform; the dtype is the usual one for the device
(float32 on a CPU, bfloat16 on CUDA).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def _dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def generate(model_dir: str, prompts: list[str], tokens: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_dtype()).to(device).eval()

    def one(prompt: str, n: int) -> int:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"].to(device)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=True,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        return out.shape[1] - ids.shape[1]

    threads = _fastest_threads(lambda: one(prompts[0], 8))
    started = time.monotonic()
    made = sum(one(p, tokens) for p in prompts)
    return {"tokens": made, "seconds": time.monotonic() - started, "prompts": len(prompts),
            "dtype": str(_dtype()).removeprefix("torch."), "device": device, "threads": threads}


def _fastest_threads(probe) -> int:
    """torch's CPU thread count that runs `probe` fastest: one thread or torch's default. On a
    shared CPU the default (one per core) can spin-wait for cores that other work holds and
    run 10-20x slower, and the baseline should be at its best, not at its worst."""
    if torch.cuda.is_available():
        probe()
        return torch.get_num_threads()
    timings = {}
    for n in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(n)
        probe()  # warm-up at this setting
        started = time.monotonic()
        probe()
        timings[n] = time.monotonic() - started
    best = min(timings, key=timings.get)
    torch.set_num_threads(best)
    return best


def trainer(spec: dict) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from runner.training.lora import collate, encode

    hp = spec["hyperparameters"]
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [encode(tokenizer, r["messages"], int(spec.get("max_tokens", 512))) for r in spec["train"]]
    model = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=_dtype())
    model = get_peft_model(model, LoraConfig(r=int(hp["lora_rank"]), lora_alpha=int(hp["lora_alpha"]),
                                             lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    batch = int(hp["batch_size"])
    steps = -(-len(rows) // batch) * int(hp["epochs"])
    args = TrainingArguments(
        output_dir=spec["output_dir"], per_device_train_batch_size=batch, num_train_epochs=int(hp["epochs"]),
        learning_rate=float(hp["learning_rate"]), lr_scheduler_type="linear", warmup_steps=max(1, steps // 20),
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(), remove_unused_columns=False, seed=int(spec.get("seed", 0)),
        dataloader_num_workers=0, disable_tqdm=True)
    result = Trainer(model=model, args=args, train_dataset=rows,
                     data_collator=lambda batch_rows: collate(batch_rows, pad_id)).train()
    return {"seconds": result.metrics["train_runtime"], "steps": result.global_step,
            "tokens": sum(len(r["input_ids"]) for r in rows) * int(hp["epochs"]),
            "dtype": str(_dtype()).removeprefix("torch.")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--model", required=True)
    g.add_argument("--prompts", required=True, help="a JSON list of prompts")
    g.add_argument("--tokens", type=int, required=True)
    t = sub.add_parser("trainer")
    t.add_argument("spec")
    args = p.parse_args()
    if args.what == "generate":
        out = generate(args.model, json.loads(Path(args.prompts).read_text()), args.tokens)
    else:
        out = trainer(json.loads(Path(args.spec).read_text()))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
