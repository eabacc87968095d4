"""The bench harness cannot rot silently: its driver, in its quickest mode, on the cheapest figure
(P1, half a second of load a side), writes a results file with the figure's inputs, spread and
ratio. No timing is asserted: the figures are for people to read."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_the_driver_writes_a_figure_with_inputs_spread_and_ratio(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "bench.run", "P1", "--quick", "--set", "P1.seconds=0.5",
                          "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "P1" in run.stdout and "goal" in run.stdout  # the table
    figure, = json.loads(out.read_text())["figures"]
    assert figure["name"] == "P1" and not figure["error"], figure
    assert figure["inputs"]["concurrency"] and figure["inputs"]["repetitions"] == 1
    for side in (figure["platform"], figure["baseline"]):
        assert side["unit"] == "req/s" and 0 < side["min"] <= side["median"] <= side["max"]
    assert figure["result"]["ratio"] > 0 and figure["passed"] in (True, False)
    assert figure["goal"] == ">= 0.9"
