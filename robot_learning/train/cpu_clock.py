"""CPU seconds a training run has used, across resumes: what learning curves are compared by
on a shared CPU, where wall time depends on what else runs."""

from __future__ import annotations

import json
import time
from pathlib import Path


class CpuClock:
    """This process's CPU time (all its threads) plus what the run's earlier processes used,
    read from the last ``cpu_s`` in its ``metrics.jsonl``."""

    def __init__(self, metrics: Path):
        prior = 0.0
        if metrics.is_file():
            for line in reversed(metrics.read_text().splitlines()):
                try:
                    row = json.loads(line)
                except ValueError:
                    continue   # a line cut short by a kill
                if "cpu_s" in row:
                    prior = float(row["cpu_s"])
                    break
        self.start = time.process_time() - prior

    def __call__(self) -> float:
        return time.process_time() - self.start
