"""Action chunks on a timeline: each action of a chunk is due at a known time, and the
control timer asks for whatever is due *now*.

A chunk predicted from observations stamped ``t_obs`` holds actions due at
``t_obs + i * dt``. By the time it arrives, inference latency has already used up its first
actions: those are stale and never sent. When a new chunk overlaps the one being executed,
the two are blended instead of jumping from one to the other:

- ``ensemble``: temporal ensembling (as in ACT): every chunk that covers ``now`` votes, with
  weights ``exp(-k * i)`` where i = 0 is the oldest chunk, so the plan changes gradually;
- ``crossfade``: the new chunk fades in linearly over ``crossfade_s`` after it arrives, then
  the old one is dropped;
- ``replace``: the newest chunk wins at once (for comparison).

Between two policy steps the action is interpolated linearly when ``interpolate`` is set
(the control timer usually runs faster than the policy). Nothing covers ``now``: ``None``,
and the caller holds; a stale command is never replayed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLENDS = ("ensemble", "crossfade", "replace")


@dataclass
class Chunk:
    t0: float              # due time of actions[0]
    actions: np.ndarray    # [N, A]
    arrived: float         # when the chunk reached the scheduler

    def end(self, dt: float) -> float:
        """The last action is held for one policy step."""
        return self.t0 + len(self.actions) * dt

    def at(self, t: float, dt: float, interpolate: bool) -> np.ndarray:
        x = (t - self.t0) / dt
        i = int(np.floor(x))
        i = min(max(i, 0), len(self.actions) - 1)
        if not interpolate or i + 1 >= len(self.actions):
            return self.actions[i]
        f = min(max(x - i, 0.0), 1.0)
        return (1 - f) * self.actions[i] + f * self.actions[i + 1]


@dataclass
class SchedulerConfig:
    dt: float                       # policy step period (1 / the dataset's step rate)
    blend: str = "ensemble"
    ensemble_k: float = 0.1         # ACT's exponential weight per chunk (0: plain average)
    crossfade_s: float = 0.2
    interpolate: bool = True

    def __post_init__(self):
        if self.blend not in BLENDS:
            raise ValueError(f"blend '{self.blend}' is not one of {', '.join(BLENDS)}")
        if self.dt <= 0:
            raise ValueError("dt must be positive")


class ChunkScheduler:
    def __init__(self, cfg: SchedulerConfig):
        self.cfg = cfg
        self.chunks: list[Chunk] = []
        self.dropped_stale = 0       # actions that arrived too late to be sent
        self.dropped_chunks = 0      # chunks that were entirely stale on arrival
        self.version = 0             # counts the chunks added: a new one means a new plan

    def clear(self) -> None:
        self.chunks.clear()

    def add(self, t0: float, actions: np.ndarray, now: float) -> int:
        """Adds a chunk; returns how many of its actions were already stale."""
        actions = np.asarray(actions, np.float64)
        dt = self.cfg.dt
        stale = int(np.clip(np.floor((now - t0) / dt), 0, len(actions)))
        self.dropped_stale += stale
        if stale >= len(actions):
            self.dropped_chunks += 1
            return stale
        self.chunks.append(Chunk(t0 + stale * dt, actions[stale:], now))
        self.version += 1
        self._prune(now)
        return stale

    def _prune(self, now: float) -> None:
        dt = self.cfg.dt
        self.chunks = [c for c in self.chunks if c.end(dt) > now]
        if self.cfg.blend == "replace" and self.chunks:
            self.chunks = self.chunks[-1:]
        elif self.cfg.blend == "crossfade":
            # a chunk older than the newest that has finished fading in no longer matters
            while len(self.chunks) > 1 and now - self.chunks[1].arrived >= self.cfg.crossfade_s:
                self.chunks.pop(0)

    def horizon(self, now: float) -> float:
        """Seconds of actions left after ``now`` (0 when starved)."""
        return max((c.end(self.cfg.dt) - now for c in self.chunks), default=0.0)

    def due(self, now: float) -> np.ndarray | None:
        self._prune(now)
        return self.sample(now)

    def plan(self, now: float) -> tuple[np.ndarray, np.ndarray] | None:
        """The blended actions due from now on, one per policy step: (seconds after now [K],
        starting at 0; actions [K, A]), up to the first time nothing is due; None when nothing
        is. What ``due`` would give at each of those times, as one plan for the arm to execute."""
        self._prune(now)
        offsets, acts = [], []
        while (a := self.sample(now + len(acts) * self.cfg.dt)) is not None:
            offsets.append(len(acts) * self.cfg.dt)
            acts.append(a)
        return (np.array(offsets), np.stack(acts)) if acts else None

    def sample(self, now: float) -> np.ndarray | None:
        """The blended action at ``now`` from the chunks held (no pruning: ``now`` may lie ahead)."""
        cfg = self.cfg
        live = [c for c in self.chunks if c.t0 <= now < c.end(cfg.dt)]
        if not live:
            return None
        if cfg.blend == "ensemble":
            w = np.exp(-cfg.ensemble_k * np.arange(len(live)))
            acts = np.stack([c.at(now, cfg.dt, cfg.interpolate) for c in live])
            return (w[:, None] * acts).sum(0) / w.sum()
        if cfg.blend == "crossfade" and len(live) > 1:
            old, new = live[-2], live[-1]
            a = min(max((now - new.arrived) / cfg.crossfade_s, 0.0), 1.0)
            return (1 - a) * old.at(now, cfg.dt, cfg.interpolate) + a * new.at(now, cfg.dt, cfg.interpolate)
        return live[-1].at(now, cfg.dt, cfg.interpolate)
