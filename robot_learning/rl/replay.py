"""Replay buffers for off-policy RL, filled online or rebuilt from recorded datasets.

A transition is (observation, action, reward, next observation, terminal) plus what
human-in-the-loop RL needs beside it: whether the operator was in control (``intervention``),
the gripper's previous command (what "stay" means for a discrete gripper critic) and a
sequence number (who sent it, in which order: the actor/learner link counts on it).

Observations are a flat float32 ``state`` (the recipe's observation keys, concatenated in
order, as the step table stores them) and uint8 images per camera. Arrays are allocated once
(a ring: the oldest transitions go first when full), so sampling is a fancy index, never a copy
of the whole buffer, and the memory a run needs is known when it starts.

``from_dataset`` turns every recorded episode into its transitions: step k's observation,
action and reward, step k + 1's observation; the last step is terminal (its episode ended
there: success, or given up). So demonstrations, and every online episode the recorder
wrote, become buffers again after a restart: a dead learner loses no data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robot_learning.rl.rlif import rewards_before_takeovers


@dataclass
class ObsSpec:
    """Which recorded keys make an observation: state keys (``stream.array``) and camera streams."""
    state_keys: tuple[str, ...]
    state_dims: tuple[int, ...]
    image_keys: tuple[str, ...] = ()
    image_shape: tuple[int, int, int] = (64, 64, 3)

    @property
    def state_dim(self) -> int:
        return int(sum(self.state_dims))

    def flatten(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The flat state of one observation keyed like the step table."""
        if not self.state_keys:
            return np.zeros(0, np.float32)
        return np.concatenate([np.asarray(obs[k], np.float32).reshape(-1) for k in self.state_keys])

    def agent_obs(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What the agent acts on: the flat ``state`` and each camera's frame (uint8 H x W x 3)."""
        return {"state": self.flatten(obs), **{k: np.asarray(obs[k], np.uint8) for k in self.image_keys}}

    def to_json(self) -> dict:
        return {"state_keys": list(self.state_keys), "state_dims": [int(d) for d in self.state_dims],
                "image_keys": list(self.image_keys), "image_shape": [int(d) for d in self.image_shape]}

    @classmethod
    def from_json(cls, d: dict) -> ObsSpec:
        return cls(tuple(d["state_keys"]), tuple(int(x) for x in d["state_dims"]), tuple(d.get("image_keys", ())),
                   tuple(int(x) for x in d.get("image_shape", (64, 64, 3))))


class ReplayBuffer:
    def __init__(self, capacity: int, spec: ObsSpec, act_dim: int):
        self.capacity, self.spec, self.act_dim = int(capacity), spec, act_dim
        n = self.capacity
        self.arrays: dict[str, np.ndarray] = {
            "state": np.zeros((n, spec.state_dim), np.float32),
            "next_state": np.zeros((n, spec.state_dim), np.float32),
            "action": np.zeros((n, act_dim), np.float32),
            "reward": np.zeros(n, np.float32),
            "terminal": np.zeros(n, bool),
            "intervention": np.zeros(n, bool),
            "grip_before": np.zeros(n, np.float32),
            "seq": np.full(n, -1, np.int64),
        }
        for k in spec.image_keys:
            self.arrays[f"image/{k}"] = np.zeros((n, *spec.image_shape), np.uint8)
            self.arrays[f"next_image/{k}"] = np.zeros((n, *spec.image_shape), np.uint8)
        self.size = 0
        self.pos = 0
        self.added = 0  # every transition ever added (the ring forgets, this does not)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: dict[str, np.ndarray], action: np.ndarray, reward: float, next_obs: dict[str, np.ndarray],
            terminal: bool, intervention: bool = False, grip_before: float = 0.0, seq: int = -1) -> None:
        """One transition; observations keyed like the step table (state keys and camera streams)."""
        self.add_batch({"state": self.spec.flatten(obs)[None], "next_state": self.spec.flatten(next_obs)[None],
                        "action": np.asarray(action, np.float32)[None], "reward": np.float32([reward]),
                        "terminal": np.array([terminal]), "intervention": np.array([intervention]),
                        "grip_before": np.float32([grip_before]), "seq": np.int64([seq]),
                        **{f"image/{k}": np.asarray(obs[k])[None] for k in self.spec.image_keys},
                        **{f"next_image/{k}": np.asarray(next_obs[k])[None] for k in self.spec.image_keys}})

    def add_batch(self, batch: dict[str, np.ndarray]) -> None:
        """Transitions as arrays with a leading batch dimension, one per key of ``arrays``."""
        n = len(batch["reward"])
        if n > self.capacity:  # only the newest fit
            batch = {k: v[-self.capacity:] for k, v in batch.items()}
            self.added += n - self.capacity
            n = self.capacity
        rows = (self.pos + np.arange(n)) % self.capacity
        for k, arr in self.arrays.items():
            if k in batch:
                arr[rows] = batch[k]
            else:
                arr[rows] = -1 if k == "seq" else 0
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        self.added += n

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` transitions drawn uniformly, keyed as ``SAC.update`` reads them."""
        if self.size == 0:
            raise ValueError("the replay buffer is empty: nothing to sample")
        rows = rng.integers(0, self.size, n)
        return self.rows(rows)

    def rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        a = self.arrays
        out = {"obs/state": a["state"][rows], "next_obs/state": a["next_state"][rows], "action": a["action"][rows],
               "reward": a["reward"][rows], "terminal": a["terminal"][rows], "grip_before": a["grip_before"][rows]}
        for k in self.spec.image_keys:
            out[f"obs/{k}"] = a[f"image/{k}"][rows]
            out[f"next_obs/{k}"] = a[f"next_image/{k}"][rows]
        return out

    def in_order(self) -> dict[str, np.ndarray]:
        """Every stored transition, oldest first."""
        start = self.pos if self.size == self.capacity else 0
        rows = (start + np.arange(self.size)) % self.capacity
        return {k: v[rows] for k, v in self.arrays.items()}

    # ---- persistence: a resumed run continues with the very buffer it had ----------------
    def save(self, path: str | Path) -> Path:
        """The stored transitions (oldest first) as one .npz, written whole or not at all."""
        path = Path(path)
        tmp = path.with_name(path.name + ".partial.npz")
        np.savez(tmp, added=np.int64(self.added), **self.in_order())
        tmp.replace(path)
        return path

    def load(self, path: str | Path) -> None:
        with np.load(path) as z:
            batch = {k: z[k] for k in self.arrays if k in z.files}
            added = int(z["added"])
        self.size = self.pos = 0
        self.add_batch(batch)
        self.added = added


def sample_mixed(buffers: list[tuple[ReplayBuffer, float]], n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` transitions, a fixed share from each buffer (RLPD: half demonstrations, half online),
    shuffled together, so any slice of the batch (one of ``utd`` critic updates) holds both
    kinds; ``source`` says which buffer (its index in ``buffers``) each row came from. An empty
    buffer's share goes to the others."""
    live = [(i, b, w) for i, (b, w) in enumerate(buffers) if len(b)]
    if not live:
        raise ValueError("every replay buffer is empty: nothing to sample")
    total = sum(w for _, _, w in live)
    counts = [int(round(n * w / total)) for _, _, w in live]
    counts[-1] = n - sum(counts[:-1])
    parts = [b.sample(c, rng) for (_, b, _), c in zip(live, counts) if c > 0]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["source"] = np.concatenate([np.full(c, i, np.int64) for (i, _, _), c in zip(live, counts) if c > 0])
    order = rng.permutation(n)
    return {k: v[order] for k, v in out.items()}


def rlpd_batch(online: ReplayBuffer, demo: ReplayBuffer | None, demo_ratio: float, n: int,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """RLPD's batch: ``demo_ratio`` of it from the demonstrations, the rest online, with a
    ``demo`` flag per row (what a behaviour-cloning term on the demonstrations reads)."""
    parts = [(online, 1.0)] if demo is None else [(online, 1.0 - demo_ratio), (demo, demo_ratio)]
    batch = sample_mixed(parts, n, rng)
    batch["demo"] = batch.pop("source") == 1
    return batch


def obs_spec_from_dataset(dataset, state_keys: list[str], image_keys: list[str] = (),
                          image_size: tuple[int, int] = (64, 64)) -> ObsSpec:
    """The observation layout of ``dataset``'s step tables for these keys (sizes read from the first episode)."""
    ep = next((dataset.episode(i) for i in dataset.indices if dataset.episode(i).n_steps), None)
    if ep is None:
        raise ValueError(f"{dataset.path}: no episode with steps to take the observation layout from")
    missing = [k for k in state_keys if k not in ep.steps["obs"]]
    if missing:
        raise ValueError(f"{dataset.path}: the step table has no {', '.join(missing)} "
                         f"(it has {', '.join(sorted(ep.steps['obs'].array_keys()))})")
    dims = tuple(int(np.prod(ep.steps["obs"][k].shape[1:])) for k in state_keys)
    return ObsSpec(tuple(state_keys), dims, tuple(image_keys), (*image_size, 3))


def from_dataset(dataset, spec: ObsSpec, buffer: ReplayBuffer | None = None, episodes: list[int] | None = None,
                 capacity: int | None = None, progress: bool = False, drop_idle: bool = False,
                 online: bool = False, rlif: bool = False) -> ReplayBuffer:
    """Every transition of the dataset's episodes (or ``episodes``), in order, into ``buffer``
    (a new one sized to fit when None). Interventions keep their flag; rewards and ends are the
    step table's (reward 1 on the last step of a successful episode). ``drop_idle`` leaves out
    steps where the operator commanded nothing (no motion, the gripper command unchanged, not
    the last step): a person's pauses teach a cloned actor to stop where the task goes on.

    ``online``: the episodes are a policy's (RL with the recorder on): only a successful one
    ends in a terminal state, a timed-out one is cut, not over. ``rlif``: rewards as RLIF's
    (``rl.rlif``): -1 on the step before each takeover, 0 elsewhere."""
    from tqdm import tqdm

    chosen = episodes if episodes is not None else dataset.indices
    eps = [dataset.episode(i) for i in chosen]
    eps = [e for e in eps if e.n_steps]
    if buffer is None:
        total = sum(e.n_steps for e in eps)
        buffer = ReplayBuffer(max(capacity or total, 1), spec, _action_dim(eps))
    for ep in tqdm(eps, desc="buffer from dataset", unit="ep", disable=not progress):
        n = ep.n_steps
        obs = episode_observations(ep, spec)
        action = ep.steps["action"][:].astype(np.float32)
        nxt = np.r_[np.arange(1, n), n - 1]
        batch = {"state": obs["state"], "next_state": obs["state"][nxt], "action": action,
                 "reward": ep.steps["reward"][:].astype(np.float32),
                 "terminal": (np.arange(n) == n - 1) & (not online or ep.meta.get("success") is True),
                 "intervention": ep.steps["intervention"][:].astype(bool),
                 "grip_before": np.r_[0.0, action[:-1, -1]].astype(np.float32)}
        for cam in spec.image_keys:
            batch[f"image/{cam}"], batch[f"next_image/{cam}"] = obs[cam], obs[cam][nxt]
        if rlif:
            batch["reward"] = rewards_before_takeovers(batch["intervention"])
        if drop_idle:
            idle = (np.abs(action[:, :-1]).max(1) < 1e-9) & (action[:, -1] == batch["grip_before"])
            idle[-1] = False
            batch = {k: v[~idle] for k, v in batch.items()}
        buffer.add_batch(batch)
    return buffer


def demo_buffer(path: str | Path, spec: ObsSpec, low, high, successes_only: bool = True, drop_idle: bool = True,
                room: int = 0, progress: bool = False, rlif: bool = False) -> ReplayBuffer:
    """The demonstrations in the dataset at ``path`` as both learners use them (``train sac`` and
    the graph's learner): the successful episodes only (unless ``successes_only`` is off), the
    operator's idle steps left out, each action as the action space (``low``, ``high``) lets it
    through (a task that narrows it caps an operator's faster moves, which the actor could never
    choose), and ``room`` rows more for the operator's corrections, which join them (HIL-SERL).
    ``rlif``: rewards as RLIF counts them, 0 at every step (nobody took a demonstration over);
    their recorded success reward beside the online takeover penalties would be two reward
    definitions in one critic (its values went to 2.7, where neither allows more than 1)."""
    from robot_learning.data.store import Dataset

    ds = Dataset(path)
    want = obs_spec_from_dataset(ds, list(spec.state_keys), list(spec.image_keys), spec.image_shape[:2])
    if want.state_dims != spec.state_dims:
        raise ValueError(f"{path} has observation sizes {want.state_dims} for {', '.join(spec.state_keys)}, "
                         f"the observation here has {spec.state_dims}")
    chosen = [i for i in ds.indices if ds.episode(i).meta.get("success")] if successes_only else list(ds.indices)
    if not chosen:
        raise ValueError(f"{path} has no {'successful ' if successes_only else ''}episode to learn from"
                         + (" (turn off demo_successes_only to use the failed ones)" if successes_only else ""))
    total = sum(ds.episode(i).n_steps for i in chosen)
    demo = from_dataset(ds, spec, episodes=chosen, progress=progress, drop_idle=drop_idle, capacity=total + room)
    np.clip(demo.arrays["action"], np.asarray(low, np.float32), np.asarray(high, np.float32),
            out=demo.arrays["action"])
    if rlif:
        demo.arrays["reward"][:] = 0.0
    return demo


def episode_observations(ep, spec: ObsSpec) -> dict[str, np.ndarray]:
    """One episode's observation per step, as ``spec`` lays them out: ``state`` [n, state_dim]
    and each camera's frames [n, H, W, 3] uint8 (resized; black where the camera had sent nothing yet)."""
    from robot_learning.data.sampler import resize_frame

    n = ep.n_steps
    out = {"state": np.concatenate([ep.steps["obs"][k][:].reshape(n, -1).astype(np.float32)
                                    for k in spec.state_keys], axis=1)
           if spec.state_keys else np.zeros((n, 0), np.float32)}
    for cam in spec.image_keys:
        rows = ep.steps["index"][cam][:]
        data = ep.streams[cam]["data"]
        cache = {int(r): resize_frame(data[int(r)], spec.image_shape[:2]) for r in np.unique(rows[rows >= 0])}
        blank = np.zeros(spec.image_shape, np.uint8)
        out[cam] = np.stack([cache.get(int(r), blank) for r in rows])
    return out


def _action_dim(eps) -> int:
    return int(eps[0].steps["action"].shape[1]) if eps else 1
