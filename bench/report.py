"""A bench figure as it is reported: what was measured against which baseline, with its inputs,
spread and goal, and the table and JSON that `make bench` prints and writes.

A figure carries its own error instead of raising: a figure that failed or timed out is a result
to report (the shortfall is the finding), never a reason to lose the others.
"""
from __future__ import annotations

import json
import math
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


def spread(samples: Sequence[float], unit: str, digits: int = 2) -> dict[str, Any]:
    """min / median / max (and the samples themselves) of a measured quantity."""
    values = [float(s) for s in samples]
    if not values:
        return {"unit": unit, "n": 0}
    r = lambda v: round(v, digits)  # noqa: E731
    return {"unit": unit, "n": len(values), "min": r(min(values)), "median": r(statistics.median(values)),
            "max": r(max(values)), "samples": [r(v) for v in values]}


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method: with 100 samples p99 is the 99th."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def count_reasons(reasons: Sequence[str], width: int = 160) -> dict[str, int]:
    """How many times each failure happened, ids left out so that equal failures count together."""
    counts: dict[str, int] = {}
    for reason in reasons:
        key = _UUID.sub("{id}", " ".join(reason.split()))[:width]
        counts[key] = counts.get(key, 0) + 1
    return counts


@dataclass
class Figure:
    name: str                      # P1, P2, ...
    measures: str                  # one line: what is divided by what
    goal: str                      # as the issue states it, e.g. ">= 0.6"
    model: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    platform: dict[str, Any] = field(default_factory=dict)   # spread of the measured side
    baseline: dict[str, Any] = field(default_factory=dict)   # spread of the baseline, same run
    result: dict[str, Any] = field(default_factory=dict)     # the ratio (or percentiles) judged by the goal
    passed: bool | None = None     # None: not judged (skipped, or no result)
    error: str = ""                # why the figure has no (complete) result
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def judge(self, ok: bool) -> "Figure":
        self.passed = bool(ok) and not self.error
        return self


def ratio_result(platform: Sequence[float], baseline: Sequence[float], *, higher_is_better: bool = True,
                 paired: bool = True) -> dict[str, Any]:
    """The ratio of the medians, and the spread of the ratios of repetitions run side by side."""
    result: dict[str, Any] = {"ratio": round(statistics.median(platform) / statistics.median(baseline), 3)}
    if paired and len(platform) == len(baseline) and len(platform) > 1:
        result["per_repetition"] = spread([p / b for p, b in zip(platform, baseline)], "ratio", 3)
    return result


def run_figure(name: str, measures: str, goal: str, body: Callable[[Figure], None]) -> Figure:
    """Runs `body` on a fresh figure; an exception becomes the figure's error, never the bench's."""
    figure = Figure(name, measures, goal)
    started = time.monotonic()
    try:
        body(figure)
    except Exception as err:  # noqa: BLE001 - every failure is a result to report
        figure.error = figure.error or f"{type(err).__name__}: {err}"[:800]
        figure.passed = False
    figure.seconds = round(time.monotonic() - started, 1)
    return figure


def _side(s: dict[str, Any]) -> str:
    if not s or not s.get("n"):
        return "-"
    med, unit = s["median"], s["unit"]
    if s["n"] == 1:
        return f"{med:g} {unit}"
    return f"{med:g} {unit} [{s['min']:g}-{s['max']:g}]"


def _result(f: Figure) -> str:
    if "ratio" in f.result:
        text = f"{f.result['ratio']:g}x"
        rep = f.result.get("per_repetition")
        if rep:
            text += f" [{rep['min']:g}-{rep['max']:g}]"
        return text
    return ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}"
                     for k, v in f.result.items() if isinstance(v, (int, float, str))) or "-"


def _inputs(f: Figure) -> str:
    keys = ("concurrency", "sessions", "backlog", "tokens", "repetitions", "seconds", "samples", "checks", "levels",
            "chunks", "rows", "epochs")
    return ", ".join(f"{k}={f.inputs[k]}" for k in keys if k in f.inputs)


def table(figures: Sequence[Figure]) -> str:
    rows = [("figure", "model", "inputs", "platform [min-max]", "baseline [min-max]", "result", "goal", "pass")]
    for f in figures:
        verdict = {True: "PASS", False: "FAIL", None: "skip"}[f.passed]
        rows.append((f.name, f.model or "-", _inputs(f), _side(f.platform), _side(f.baseline), _result(f),
                     f.goal, verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for f in figures:
        if f.error:
            lines.append(f"{f.name}: {' '.join(f.error.split())[:600]}")
        for note in f.notes:
            lines.append(f"{f.name}: {note}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import os

    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a description only
        info["cuda"] = None
    return info


def write_json(path: Path, figures: Sequence[Figure], argv: Sequence[str]) -> None:
    doc = {"written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": list(argv), "machine": machine(),
           "figures": [asdict(f) for f in figures]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
