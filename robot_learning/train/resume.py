"""Going on with a stopped RL run: its own saved configuration, to a longer step budget."""

from __future__ import annotations

import json
from pathlib import Path


def resumed_config(cfg, resume: Path):
    """The configuration ``resume`` was started with (``train_config.json``), as the same
    dataclass as ``cfg``, running to ``cfg.steps`` when that is longer."""
    saved = json.loads((Path(resume) / "train_config.json").read_text())
    return type(cfg)(**{**saved, "resume": str(resume), "steps": max(cfg.steps, saved["steps"])})
