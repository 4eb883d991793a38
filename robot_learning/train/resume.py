"""Going on with a stopped RL run: its own saved configuration, to a longer step budget."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path


def save_config(run: Path, cfg, trainer: str) -> None:
    """``train_config.json``: the configuration and the ``train`` command (``trainer``) that
    started the run, so that resuming it with another command is refused by name."""
    (run / "train_config.json").write_text(json.dumps({"trainer": trainer, **asdict(cfg)}, indent=1))


def resumed_config(cfg, resume: Path, trainer: str):
    """The configuration ``resume`` was started with, as the same dataclass as ``cfg``, running
    to ``cfg.steps`` when that is longer, on this command's device and threads (the machine's
    business, not the run's: a run started on a CPU may go on on a GPU). A run started by
    another ``train`` command is refused."""
    path = Path(resume) / "train_config.json"
    if not path.is_file():
        raise SystemExit(f"--resume {resume}: there is no train_config.json there (is it a run directory?)")
    saved = json.loads(path.read_text())
    started = saved.pop("trainer", trainer)   # runs from before it was recorded: trust the command
    unknown = sorted(set(saved) - {f.name for f in fields(cfg)})
    if started != trainer or unknown:
        raise SystemExit(f"--resume {resume}: that run was started by `robot-learning train "
                         f"{started if started != trainer else 'another kind'}` (its train_config.json has "
                         f"{', '.join(unknown) or 'trainer ' + started}); resume it with that command")
    here = {k: getattr(cfg, k) for k in ("device", "threads") if k in saved}
    return type(cfg)(**{**saved, **here, "resume": str(resume), "steps": max(cfg.steps, saved["steps"])})
