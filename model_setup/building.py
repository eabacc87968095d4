"""Building a model's directory once, the way every set-up step does: made in a staging folder,
its marker (what it was made from) written last, then moved into place. A directory with its
marker is kept as it is; one without (an interrupted run) is built again."""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable


def build_once(out: Path, marker: str, made_from: dict[str, Any], make: Callable[[Path, Path], None],
               done: str) -> Path:
    """`make(workdir, staging)` fills `staging` (`workdir` is scratch space for downloads);
    `done` says how, in the line printed when it is built."""
    if (out / marker).exists():
        return out
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"{out.name}-") as tmp:
        staging = Path(tmp) / out.name
        make(Path(tmp), staging)
        (staging / marker).write_text(json.dumps(made_from) + "\n")
        if out.exists():
            shutil.rmtree(out)  # a half-built directory from an interrupted run
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), out)
    print(f"{out.name}: {done} in {time.monotonic() - started:.0f}s -> {out}", flush=True)
    return out


def command_line(description: str, build: Callable[[str], Path], argv: list[str] | None = None) -> None:
    """`python -m model_setup.<module> --out DIR`."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, help="models directory")
    build(p.parse_args(argv).out)
