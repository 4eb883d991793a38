"""Which torch device a trainer or learner runs on, from what the user asked for."""

from __future__ import annotations

import os
import statistics


def pick_device(name: str) -> str:
    """``auto``: this process's GPU (``LOCAL_RANK`` under torchrun) when CUDA is there, else the
    CPU; anything else as given, refused in one sentence when it cannot run here (a learner told
    ``cuda`` on a machine without one would otherwise fail at its first update, minutes in)."""
    import torch

    if name == "auto":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device '{name}' is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}': this machine has no CUDA GPU torch can use; use cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device '{name}': this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return name


class AdaptiveThreads:
    """Torch's CPU thread count for a training loop, chosen by timing its own steps.

    Why: torch's default takes every core. On an idle 2-core machine two threads train the
    demo's U-Net about 1.5x faster than one, but with another process keeping a core busy
    each step waits for its slower thread and one step took 540-1010 ms against 190-200 ms
    with one thread (docs/learning.md): the demo then trained half the steps it needed. Load
    comes and goes (a sim collecting, a test run), so the choice is timed again every
    ``recheck_s`` seconds: ``probe_steps`` steps at each count, the fastest one kept. A round
    that took long (steps of seconds) waits ten times its own length before the next, so timing
    the slower counts never costs more than a tenth of the run.

    Call ``step_done(seconds)`` after each step with its wall time; it sets the thread count
    for the next one."""

    def __init__(self, counts: tuple[int, ...] | None = None, probe_steps: int = 8, recheck_s: float = 60.0,
                 log=print):
        import time

        import torch

        self._torch, self._clock = torch, time.monotonic
        n = os.cpu_count() or 1
        self.counts = tuple(counts) if counts else tuple(sorted({1, max(1, n // 2), n}))
        self.probe_steps, self.recheck_s, self.log = probe_steps, recheck_s, log
        self.chosen: int | None = None
        self._probe: list[int] = []          # counts still to time in this round
        self._times: dict[int, list[float]] = {}
        self._chosen_at = 0.0
        self._round_s = 0.0
        self._start_round()

    def _start_round(self) -> None:
        self._round_began = self._clock()
        self._probe = list(self.counts)
        self._times = {c: [] for c in self.counts}
        self._torch.set_num_threads(self._probe[0])

    def step_done(self, seconds: float) -> None:
        if self._probe:
            c = self._probe[0]
            self._times[c].append(seconds)
            if len(self._times[c]) > self.probe_steps:  # the first step after a switch is not counted
                self._probe.pop(0)
                if self._probe:
                    self._torch.set_num_threads(self._probe[0])
                else:
                    per = {k: statistics.median(v[1:]) for k, v in self._times.items()}
                    best = min(per, key=per.get)
                    if best != self.chosen:
                        self.log(f"threads: {best} ({', '.join(f'{k}: {1e3 * t:.0f} ms' for k, t in per.items())}"
                                 " a step)")
                    self.chosen, self._chosen_at = best, self._clock()
                    self._round_s = self._chosen_at - self._round_began
                    self._torch.set_num_threads(best)
        elif self._clock() - self._chosen_at > max(self.recheck_s, 10 * self._round_s):
            self._start_round()
