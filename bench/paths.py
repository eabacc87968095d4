"""Where the bench finds the repository and the models: no third-party imports, so that what runs
without the platform's stack (bench.gpu_figures on a bare GPU machine) can use it too."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def models_dir() -> Path:
    return Path(os.environ.get("HELIX_MODELS_DIR", REPO / ".helix" / "models"))
