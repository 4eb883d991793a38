"""The learner process's work, without ROS: take transitions in, train, hand weights out.

The learner meets its actor through the actor's *spec* (observation keys and sizes, action
bounds: JSON the actor publishes, latched), so it needs neither the robot's nor the sim's
code. Its run directory holds everything a restart needs: ``spec.json``, the journal of every
transition received (``journal/``, see ``rl.link``), the agent with its optimizers
(``checkpoints/last``) and ``metrics.jsonl``. Demonstrations come from a zarr dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from robot_learning.rl.link import Inbox, Transition
from robot_learning.rl.replay import ObsSpec, ReplayBuffer, demo_buffer, rlpd_batch
from robot_learning.rl.rlif import q_range


def spec_json(spec: ObsSpec, low: list[float], high: list[float], dt: float, name: str,
              action_dims: list[int] = (), rlif: bool = False, extra: dict | None = None) -> str:
    """What a learner needs to know of an actor, as the actor publishes it; ``action_dims``: the
    dims the policy chooses (the task's; the rest are the task's own, as in ``SACConfig``);
    ``rlif``: its rewards are RLIF's (the demonstrations' are then 0 too); ``extra``: a residual
    actor's (``ResidualOnRobot.spec_extra``: the agent starts at no correction, its returns'
    range, what its checkpoints must say to deploy)."""
    return json.dumps({**spec.to_json(), "action_low": [float(x) for x in low],
                       "action_high": [float(x) for x in high], "dt": float(dt), "env": name}
                      | ({"action_dims": [int(d) for d in action_dims]} if action_dims else {})
                      | ({"reward": "rlif"} if rlif else {}) | (extra or {}))


def transition_arrays(spec: ObsSpec, obs: dict[str, np.ndarray], action: np.ndarray, reward: float,
                      next_obs: dict[str, np.ndarray], terminal: bool, intervention: bool,
                      grip_before: float) -> dict[str, np.ndarray]:
    """One executed step as the link carries it: flat states and camera frames laid out by
    ``spec`` (observations keyed like the step table), the action that reached the arm."""
    out = {"state": spec.flatten(obs), "next_state": spec.flatten(next_obs),
           "action": np.asarray(action, np.float32), "reward": np.float32(reward), "terminal": np.bool_(terminal),
           "intervention": np.bool_(intervention), "grip_before": np.float32(grip_before)}
    for k in spec.image_keys:
        out[f"image/{k}"], out[f"next_image/{k}"] = np.asarray(obs[k], np.uint8), np.asarray(next_obs[k], np.uint8)
    return out


class Learner:
    def __init__(self, run: str | Path, spec: dict, demos: str = "", batch_size: int = 256, utd: int = 1,
                 hidden: tuple[int, ...] = (256, 256), demo_ratio: float = 0.5, learning_starts: int = 200,
                 buffer_size: int = 200_000, seed: int = 0, sac: dict | None = None,
                 demo_successes_only: bool = True, demo_drop_idle: bool = True, device: str = "auto",
                 online_datasets: tuple[str, ...] = ()):
        """``sac``: more of the agent's choices (``SACConfig`` fields: ``gamma``, ``n_critics``,
        ``backup_entropy``, ...) as ``train sac`` takes them, so a graph run and an env run can
        be the same learner; the demonstrations are read as ``train sac`` reads them. ``device``:
        where the updates run (``nets.device.pick_device``; the weights go out as CPU tensors
        whatever it is, so the actor needs no GPU). ``online_datasets``: what the recorder kept of
        earlier runs' online episodes (``record:=true``), read into the buffers first, at every
        start (this run's own are in its journal): a learner started afresh, on another
        machine, loses nothing the robot has done."""
        import torch

        from robot_learning.nets.device import pick_device
        from robot_learning.policies.registry import read_checkpoint
        from robot_learning.policies.sac import SAC, SACConfig, load_sac

        self.device = pick_device(device)
        self.run = Path(run)
        self.run.mkdir(parents=True, exist_ok=True)
        saved = self.run / "spec.json"
        if saved.exists():
            old = json.loads(saved.read_text())
            if old != spec:
                raise ValueError(f"{self.run} was started for another actor ({old['env']}, keys "
                                 f"{old['state_keys']}): use a new run directory for {spec['env']}")
        saved.write_text(json.dumps(spec, indent=1))
        self.actor_spec = spec
        self.spec = ObsSpec.from_json(spec)
        self.batch_size, self.demo_ratio, self.learning_starts = batch_size, demo_ratio, learning_starts
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        act_dim = len(spec["action_low"])
        self.online = ReplayBuffer(buffer_size, self.spec, act_dim)
        self.demo = None
        if demos and spec.get("zero_correction"):
            raise ValueError("a residual actor's transitions hold the base's action, which demonstrations do not: "
                             "start the learner without demos")
        if online_datasets and spec.get("zero_correction"):
            raise ValueError("a residual actor's transitions hold its corrections, which a recording does not: "
                             "start the learner without online_datasets")
        if demos:  # room for the operator's corrections, which join the demonstrations (HIL-SERL)
            self.demo = demo_buffer(demos, self.spec, spec["action_low"], spec["action_high"], demo_successes_only,
                                    demo_drop_idle, room=buffer_size, rlif=spec.get("reward") == "rlif")
        self.inbox = Inbox(self.run / "journal")
        self.received = 0
        self.misfits = 0  # transitions laid out for another spec (an earlier run's outbox resent)
        self.from_datasets = sum(self._read_online(p, spec.get("reward") == "rlif") for p in online_datasets)
        for tr in self.inbox.replay():  # a restart: the buffers are what the actors sent
            self._store(tr)
        last = self.run / "checkpoints" / "last"
        if (last / "config.json").exists():  # its base (a residual's) is the actor's business
            self.agent, meta = load_sac(read_checkpoint(last, check_base=False), self.device,
                                         optimizers=True)
            self.version = int(meta.get("policy_version", 0))
        else:
            cfg = SACConfig(obs_dim=self.spec.state_dim, action_low=spec["action_low"],
                            action_high=spec["action_high"], hidden=list(hidden), utd=utd,
                            image_keys=list(self.spec.image_keys), image_size=list(self.spec.image_shape[:2]),
                            action_dims=list(spec.get("action_dims", [])), **(sac or {}))
            if spec.get("reward") == "rlif":  # returns in RLIF's range, whatever gamma was chosen
                cfg.q_range = q_range(cfg.gamma)
            elif spec.get("return_range"):  # the task's (a residual's: success ends it, 1)
                cfg.bound_to_returns(spec["return_range"])
            self.agent = SAC(cfg, self.device)
            if spec.get("zero_correction"):  # a residual: the untrained agent is the base, exactly
                self.agent.actor.zero_mean()
            if self.demo is not None:
                st = self.demo.in_order()["state"]
                self.agent.set_obs_normalization(st.mean(0), st.std(0))
            self.version = 0
        self.metrics = (self.run / "metrics.jsonl").open("a")
        self.tb = None   # TensorBoard scalars, under the names train sac uses, by transitions received
        self.last_update: dict = {}

    def _read_online(self, path: str, rlif: bool) -> int:
        """A recorded online dataset into the online buffer, its interventions into the
        demonstrations' too (as ``_store`` does); returns how many transitions."""
        from robot_learning.data.store import Dataset, DatasetError
        from robot_learning.rl.replay import from_dataset

        try:
            ds = Dataset(path)
        except DatasetError as e:
            raise ValueError(f"online_datasets: {e}") from None
        eps = [i for i in ds.indices if ds.episode(i).meta.get("status") == "complete"]
        got = from_dataset(ds, self.spec, episodes=eps, online=True, rlif=rlif)
        if got.act_dim != self.online.act_dim:
            raise ValueError(f"online_datasets: {path} has {got.act_dim}-D actions, this actor's are "
                             f"{self.online.act_dim}-D: it was recorded for another task")
        rows = got.in_order()
        self.online.add_batch(rows)
        if self.demo is not None:
            self.demo.add_batch({k: v[rows["intervention"]] for k, v in rows.items()})
        return len(got)

    def _store(self, tr: Transition) -> None:
        """Into the online buffer; an intervention (the operator's action) into the
        demonstrations' too, as HIL-SERL does. A transition of another layout (an outbox an
        earlier run left behind, resent to this learner) is counted in ``misfits``, not stored."""
        a = tr.arrays
        if np.size(a.get("state", ())) != self.spec.state_dim or np.size(a.get("action", ())) != self.online.act_dim:
            self.misfits += 1
            return
        keys = ["state", "next_state", "action", "reward", "terminal", "intervention", "grip_before"]
        keys += [f"{kind}/{k}" for k in self.spec.image_keys for kind in ("image", "next_image")]
        row = {k: np.asarray(a[k])[None] for k in keys} | {"seq": np.int64([tr.seq])}
        self.online.add_batch(row)
        if self.demo is not None and bool(a["intervention"]):
            self.demo.add_batch(row)
        self.received += 1

    def receive(self, payload: bytes) -> int:
        """A transition from the link; returns how many became storable (0: a duplicate, or waiting for a gap)."""
        new = self.inbox.offer(payload)
        for tr in new:
            self._store(tr)
        return len(new)

    def acks(self) -> dict[str, int]:
        """Durable now: what the actors may forget."""
        return self.inbox.commit()

    def ready(self) -> bool:
        return len(self.online) >= self.learning_starts

    def update(self) -> dict:
        import torch

        batch = rlpd_batch(self.online, self.demo, self.demo_ratio, self.batch_size * self.agent.cfg.utd, self.rng)
        self.last_update = self.agent.update({k: torch.as_tensor(v, device=self.device) for k, v in batch.items()})
        return self.last_update

    def agent_meta(self) -> dict:
        """What the policy server's SAC plug-in needs besides the weights to run the agent
        itself: its state's keys in order, its step and env (a residual's checkpoint says more,
        ``spec["checkpoint"]``: its base, and the keys the server observes for it)."""
        sp = self.actor_spec
        return {"obs_keys": sp["state_keys"], "dt": sp["dt"], "env": sp["env"]}

    def weights(self) -> tuple[int, str, bytes]:
        """(version, the agent's config and ``agent_meta`` as JSON, the weights the actor needs
        as safetensors bytes): what ``ActorPolicy`` builds the server's plug-in from."""
        from safetensors.torch import save

        self.version += 1
        keep = ("encoder.", "actor.", "grip.")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.agent.state_dict().items() if k.startswith(keep)}
        return self.version, json.dumps({"config": self.agent.cfg.to_json(), **self.agent_meta()}), save(tensors)

    def checkpoint(self) -> None:
        self.agent.save(self.run / "checkpoints" / "last", optimizers=True,
                        extra={"policy_version": self.version, "received": self.received, **self.agent_meta(),
                               **self.actor_spec.get("checkpoint", {})})
        row = {"time": time.time(), "updates": self.agent.updates, "received": self.received,
               "version": self.version, **self.last_update}
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()
        if self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run / "tb"))
        for k, v in row.items():
            if k not in ("time", "received") and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, self.received)
        self.tb.flush()

    def close(self) -> None:
        self.inbox.close()
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()


class ActorPolicy:
    """The actor's copy of the learner's policy, rebuilt from the weights the learner publishes
    and run through the policy server's SAC plug-in (``policies.sac.SacRunner``): the actor
    assembles the state, keeps the gripper and bounds the action with the code that deploys a
    SAC checkpoint, so a layout mistake shows while training on the robot, not after it."""

    KEEP_EVERY_S = 2.0  # at most one kept version per this long: the write is on the stepping thread

    def __init__(self, keep: str | Path | None = None, tag: str = "actor"):
        """``keep``: a folder (the actor's outbox) where the policy last loaded is kept, so that
        an actor restarted while no learner is up acts with it (``restore``) rather than
        exploring from scratch on the robot; ``tag``: the actor's name, one kept policy each."""
        self.runner = None
        self.version = 0
        self.restored = False  # acting with a kept policy: the next weights replace it, whatever their version
        self.keep = Path(keep) if keep else None
        self.tag = tag
        self.spec: dict | None = None  # the actor's, as announced: what a kept policy must have been trained for
        self._kept_at = -np.inf

    @property
    def agent(self):
        """The SAC agent (None before the first weights: the actor explores uniformly)."""
        return None if self.runner is None else self.runner.agent

    @staticmethod
    def warm_up() -> None:
        """Build a throwaway agent now: torch's first optimizer costs about 0.9 s of lazy imports,
        and paid when the first weights arrived it stalled the actor's commands for 1.3 s."""
        from robot_learning.policies.sac import SAC, SACConfig

        SAC(SACConfig(obs_dim=1, action_low=[-1.0, 0.0], action_high=[1.0, 1.0], hidden=[4]))

    def load(self, version: int, meta: str, weights: bytes) -> None:
        """``meta``: the agent's config and what the plug-in needs to run it (``Learner.weights``)."""
        from safetensors.torch import load

        from robot_learning.policies.sac import SAC, SACConfig, SacRunner

        meta_d = json.loads(meta)
        agent = self.agent
        if agent is None or meta_d["config"] != agent.cfg.to_json():
            agent = SAC(SACConfig(**meta_d["config"]))
            agent.eval()
        agent.load_state_dict(load(bytes(weights)), strict=False)
        self.runner = SacRunner(agent, meta_d, Path(f"learner weights, version {version}"), shape=False)
        self.version, self.restored = version, False
        if self.keep is not None and self.spec is not None and time.monotonic() - self._kept_at >= self.KEEP_EVERY_S:
            self._write_kept(version, meta_d, bytes(weights))
            self._kept_at = time.monotonic()

    def _kept(self, suffix: str) -> Path:
        return self.keep / f"policy_{self.tag}{suffix}"

    def _write_kept(self, version: int, meta: dict, weights: bytes) -> None:
        """The weights under their version's name, then the record naming them (with their hash
        and the actor's spec), then the older weights go: a crash at any point leaves a record
        whose weights are whole, or none. Temporary names carry the pid (two processes on one
        outbox never rename each other's files)."""
        self.keep.mkdir(parents=True, exist_ok=True)
        name = self._kept(f"-{version}.safetensors")
        record = {"version": version, "meta": meta, "spec": self.spec, "weights": name.name,
                  "sha256": hashlib.sha256(weights).hexdigest()}
        for path, data in ((name, weights), (self._kept(".json"), json.dumps(record).encode())):
            tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
            tmp.write_bytes(data)
            tmp.replace(path)
        for old in self.keep.glob(f"policy_{self.tag}-*.safetensors"):
            if old != name:
                old.unlink(missing_ok=True)

    def restore(self, spec: dict) -> str | None:
        """Act with the policy an earlier run of this actor kept, if it was trained for this very
        spec (``spec_json``: env, keys and sizes, cameras, bounds, a residual's base); a sentence
        for the log, None when nothing was kept. It stands until a learner sends weights."""
        self.spec = spec
        if self.keep is None or not self._kept(".json").exists():
            return None
        where = self._kept(".json")
        try:
            rec = json.loads(where.read_text())
            weights = (self.keep / rec["weights"]).read_bytes()
            version = int(rec["version"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"the policy kept in {where} is unreadable ({e}): exploring until a learner sends weights"
        if hashlib.sha256(weights).hexdigest() != rec.get("sha256"):
            return f"the policy kept in {where} is damaged: exploring until a learner sends weights"
        if rec.get("spec") != spec:
            return (f"the policy kept in {where} was trained for another actor spec ({rec.get('meta', {}).get('env')}"
                    f" observing {rec.get('meta', {}).get('obs_keys')}): exploring until a learner sends weights")
        try:
            self.load(version, json.dumps(rec["meta"]), weights)
        except Exception as e:  # a kept config this code no longer builds: never a crash at every start
            self.runner = None
            return f"the policy kept in {where} does not load ({e}): exploring until a learner sends weights"
        self.restored = True
        return f"acting with policy version {version}, kept by an earlier run, until a learner sends weights"

    def act(self, obs: dict[str, np.ndarray], deterministic: bool = False,
            gripper_now: float | None = None) -> np.ndarray:
        """``obs``: one observation keyed like the step table (the spec's state keys, camera
        frames by stream) -> the agent's action; the mean with ``deterministic``."""
        r = self.runner
        r.explore, r.gripper = not deterministic, gripper_now
        window = {f"obs/{k}": np.asarray(obs[k])[None] for k in r.spec.obs_keys}
        window |= {f"image/{k}": np.asarray(obs[k], np.uint8)[None] for k in r.spec.image_keys}
        return r.act(window)[0].astype(np.float32)
