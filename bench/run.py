"""`make bench`: starts the platform once, runs the chosen figures in order, prints the table and
writes it to bench/results.json.

    .venv/bin/python -m bench.run [FIGURE ...] [--quick] [--output bench/results.json]
    e.g. .venv/bin/python -m bench.run P1 P2 --quick

Figures (the issue's table; bench/README.md says what each measures): P1 S1 A1 P2 P3 P3b P3x F1 P4
P5 P6 K1 K2 K3 FT1 P7 GPU. Each runs under its own time limit, so a figure that hangs is reported as timed out and
the next one still runs. --quick shrinks every input (fewer sessions, tokens, seconds,
repetitions): for checking that the harness works, not for figures to quote.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # `python bench/run.py` as well as `python -m bench.run`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import Figure, run_figure, table, write_json  # noqa: E402
from bench.stack import DEFAULT_MODEL, BenchStack, raise_open_file_limit  # noqa: E402


class FigureTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    """Raises FigureTimeout in this (the main) thread after `seconds`: the last guard against a
    figure that waits forever; the figures set their own, shorter timeouts on every wait."""
    def on_alarm(signum, frame):
        raise FigureTimeout(f"did not finish within {seconds:.0f}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Plan:
    measures: str
    goal: str
    full: dict[str, Any]
    quick: dict[str, Any]
    limit_s: float                  # the figure's time limit at full size
    needs_stack: bool = True


PLANS: dict[str, Plan] = {
    "P1": Plan("GET /api/v1/sessions/{id} req/s / a bare Flask route, same gunicorn command line", ">= 0.9",
               dict(concurrency=16, seconds=5.0, repetitions=3), dict(concurrency=8, seconds=1.0, repetitions=1), 300),
    "S1": Plan("open event streams one control-plane process holds while a poller's p99 < 250 ms", ">= 10000",
               dict(levels=[1000, 2500, 5000, 10000], poll_seconds=8.0), dict(levels=[50, 100], poll_seconds=2.0), 900),
    "A1": Plan("server CPU of the admission check per request (a user and key on plans that limit everything)",
               "<= 0.2 ms", dict(checks=2000, repetitions=3), dict(checks=200, repetitions=1), 300),
    "P2": Plan("POST /api/v1/sessions answered -> runner starts the job; floor: raw RQ enqueue -> start",
               "p50 <= 25 ms, p99 <= 100 ms", dict(samples=100), dict(samples=15), 900),
    "P3": Plan("tokens/s of concurrent chat sessions, POST to final event on the events stream / the same"
               " requests straight to the runner's vLLM", ">= 0.9",
               dict(sessions=64, tokens=128, repetitions=2), dict(sessions=16, tokens=32, repetitions=1), 1500),
    "P3b": Plan("the P3 platform run's tokens/s / the same prompts one after another with Hugging Face generate",
                ">= 4", dict(sessions=64, tokens=128), dict(sessions=16, tokens=32), 1500),
    "P3x": Plan("P3 with 256 sessions", ">= 0.9",
                dict(sessions=256, tokens=128, repetitions=1), dict(sessions=48, tokens=32, repetitions=1), 2400),
    "F1": Plan("another user's chat behind one user's queued chats / the same chat alone (fair share)", "<= 2",
               dict(backlog=300, tokens=64, repetitions=2), dict(backlog=40, tokens=16, repetitions=1), 1800),
    "P4": Plan("question generation for 32 chunks: one at a time (s) / concurrent (s)", ">= 5",
               dict(chunks=32), dict(chunks=6), 900),
    "P5": Plan("first chat on a fresh LoRA adapter (load + reply) / a warm chat on the base model", "<= 1.5",
               dict(tokens=32, repetitions=5), dict(tokens=16, repetitions=2), 600),
    "P6": Plan("chat tokens/s with a LoRA adapter / the base model, concurrent requests", ">= 0.7",
               dict(concurrency=16, tokens=128, repetitions=2), dict(concurrency=4, tokens=16, repetitions=1), 900),
    "K1": Plan("first-token latency of a chat turn that retrieves from its session's documents / the same turn"
               " in a plain chat", "<= 1.2", dict(repetitions=12, tokens=16), dict(repetitions=2, tokens=8), 900),
    "K2": Plan("indexing throughput: chunks per second of the index_documents stage on a long document",
               "reported", dict(paragraphs=600), dict(paragraphs=40), 900),
    "K3": Plan("the knowledge report of a default fine-tune of invented facts: held-out questions answered by"
               " the base model, retrieval, the fine-tune and both", "reported", {}, {}, 3000),
    "FT1": Plan("the reference's text fine-tune, POST to the adapter trained and evaluated, with each phase's share",
                "reported", dict(repetitions=2), dict(repetitions=1), 3000),
    "P7": Plan("fine-tune trained tokens/s (runner.training.lora) / a plain Hugging Face Trainer, same LoRA",
               ">= 1.5", dict(rows=32, epochs=1, repetitions=2), dict(rows=8, epochs=1, repetitions=1), 1200,
               needs_stack=False),
    "GPU": Plan("on CUDA: P3 and P7 on a random-weight model of Mistral-7B's configuration, beside the card's"
                " memory-bandwidth bound", "reported", dict(sessions=64, tokens=128, rows=64, epochs=1),
                dict(sessions=8, tokens=32, rows=8, epochs=1), 1800, needs_stack=False),
}
ORDER = list(PLANS)  # cheap and runner-free first; P7 and GPU after the runner is stopped


def figure_function(name: str) -> Callable:
    """The module of a figure is imported only when it runs (torch, for one, is slow to import)."""
    if name == "P1":
        from bench.api_throughput import measure
    elif name == "S1":
        from bench.stream_capacity import measure
    elif name == "A1":
        from bench.admission_cost import measure
    elif name == "P2":
        from bench.dispatch_latency import measure
    elif name == "F1":
        from bench.fair_share import measure
    elif name in ("P3", "P3x"):
        from bench.chat_throughput import measure_concurrent as measure
    elif name == "P3b":
        from bench.chat_throughput import measure_against_generate as measure
    elif name in ("P4", "P5", "P6", "P7"):
        from bench import finetune_figures
        measure = getattr(finetune_figures, f"measure_{name.lower()}")
    elif name in ("K1", "K2", "K3"):
        from bench import knowledge_figures
        measure = getattr(knowledge_figures, f"measure_{name.lower()}")
    elif name == "FT1":
        from bench.finetune_flow import measure
    elif name == "GPU":
        from bench.gpu_figures import measure
    else:
        raise KeyError(name)
    return measure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("figures", nargs="*", help=f"which figures (default: all): {' '.join(ORDER)}")
    p.add_argument("--quick", action="store_true", help="small inputs: checks the harness, not figures to quote")
    p.add_argument("--model", default=DEFAULT_MODEL, help="the runner's text model (a folder under .helix/models)")
    p.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results.json")
    p.add_argument("--set", action="append", default=[], metavar="FIGURE.KEY=VALUE",
                   help="override one input, e.g. --set P1.seconds=2 (JSON values)")
    p.add_argument("--keep", action="store_true", help="keep the stack's folder (logs) after the run")
    p.add_argument("--merge", action="store_true",
                   help="keep the output file's other figures: rerun some figures of an earlier run")
    args = p.parse_args(argv)
    names = [n for n in ORDER if n in (args.figures or ORDER)]
    unknown = set(args.figures) - set(ORDER)
    if unknown:
        p.error(f"unknown figures {sorted(unknown)}: choose from {' '.join(ORDER)}")

    overrides: dict[str, dict[str, Any]] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        figure, _, field = key.partition(".")
        overrides.setdefault(figure, {})[field] = json.loads(value)

    def stop_on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGTERM, and SIGINT even where a shell started the bench in the background with it ignored:
    # the stack is stopped (the `finally` below) and the figures done so far stay written.
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    nofile = raise_open_file_limit()
    print(f"bench: figures {' '.join(names)}{' (quick)' if args.quick else ''}; open-file limit {nofile[0]}",
          flush=True)
    figures: list[Figure] = []
    plan_of = lambda figure_name: "GPU" if figure_name.startswith("GPU") else figure_name  # noqa: E731
    kept: list[Figure] = []
    if args.merge and args.output.exists():
        kept = [Figure(**f) for f in json.loads(args.output.read_text())["figures"] if plan_of(f["name"]) not in names]

    def merged() -> list[Figure]:
        return sorted(kept + figures, key=lambda f: ORDER.index(plan_of(f.name)) if plan_of(f.name) in ORDER else 99)
    shared: dict[str, Any] = {}  # what one figure measured that a later one divides by (P3 -> P3b)
    stack: BenchStack | None = None
    stack_error = ""
    try:
        for name in names:
            plan = PLANS[name]
            params = {**(plan.quick if args.quick else plan.full), **overrides.get(name, {})}
            if plan.needs_stack and stack is None and not stack_error:
                try:
                    with time_limit(600):
                        stack = BenchStack(args.model, keep=args.keep).start()
                except Exception as err:  # noqa: BLE001 - every figure that needs it says why it has no result
                    stack_error = f"the bench's stack did not start: {type(err).__name__}: {err}"[:800]
            if plan.needs_stack and stack is None:
                figures.append(Figure(name, plan.measures, plan.goal, error=stack_error, passed=False))
                print(f"   {name}: FAIL ({stack_error})", flush=True)
                continue
            if not plan.needs_stack and stack is not None and stack.runner_process is not None:
                stack.stop_runner()  # its vLLM would compete for the CPU
            started = time.monotonic()
            print(f"-- {name}: {plan.measures} {params}", flush=True)

            def body(figure: Figure, name=name, params=params, plan=plan) -> None:
                with time_limit(plan.limit_s / (3 if args.quick else 1)):
                    figure_function(name)(stack, figure, shared=shared, figure_name=name, model=args.model,
                                          **params)

            try:
                figure = run_figure(name, plan.measures, plan.goal, body)
            except FigureTimeout as err:  # raised between the body and run_figure's handler
                figure = Figure(name, plan.measures, plan.goal, error=str(err), passed=False)
            figures.append(figure)
            figures.extend(shared.pop("extra_figures", []))  # GPU-P7 comes with GPU-P3
            verdict = {True: "PASS", False: "FAIL", None: "skip"}[figure.passed]
            print(f"   {name}: {verdict} in {time.monotonic() - started:.0f}s"
                  + (f" ({figure.error})" if figure.error else ""), flush=True)
            write_json(args.output, merged(), sys.argv)  # what is done so far survives a crash
    finally:
        if stack is not None:
            stack.stop()
    print()
    print(table(merged()))
    write_json(args.output, merged(), sys.argv)
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
