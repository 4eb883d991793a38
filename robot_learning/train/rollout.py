"""Rollouts of a policy in the gymnasium workcell env, through the policy server's own engine.

Observations are the sim's topic values keyed like the recorded streams
(``sim.topics``), fed to ``PolicyServerCore`` with the sim's time; what the server's timer
sends passes the command mux, as on the graph. So env success rates measure the policy as it
is deployed (same alignment, chunking, blending and smoothing), minus DDS and real latency.
A ``tcp_pose`` policy's chunks reach the arm as timed TCP plans, as the policy server sends
them by default (``plans``), with the gripper's due value as a plain stream beside them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from robot_learning.data.schema import Recipe
from robot_learning.runtime.policy import Policy
from robot_learning.runtime.server import HOLD_TWIST_S, PolicyServerCore, ServerConfig
from robot_learning.sim.tasks import SUCCESS_SETTLE_S
from robot_learning.sim.topics import topic_sample


def seconds_range(text: str) -> tuple[float, float]:
    """``"0.06"`` or ``"0.04,0.16"`` (a range, low to high) as (low, high) seconds: the
    command line's form of ``ServedSim``'s ``latency`` and ``lags``."""
    try:
        parts = [float(x) for x in str(text).split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 0 or parts[0] > parts[-1]:
        raise ValueError(f"'{text}' is not seconds: give one number or LOW,HIGH (for example 0.04,0.16), none negative")
    return parts[0], parts[-1]


@dataclass
class RolloutResult:
    seed: int
    success: bool
    steps: int
    frames: list[np.ndarray]
    fault: str | None = None  # the protective stop that ended the episode, if one did
    refused: int = 0          # chunks the server refused (out of bounds, NaN): the arm held meanwhile
    refusal: str = ""         # why the last one was


class ServedSim:
    """The workcell env driven by the policy server's engine, one policy step at a time.

    As on the graph: observations arrive and the server's timer ticks at ``control_hz``, the
    due action (a zero twist when starved) goes through the command mux (bounded acceleration)
    to the arm controller. Each chunk reaches the server ``latency`` seconds of sim time after
    its observations (what inference takes on the robot's computer), while the arm runs on.
    ``plans``: a ``tcp_pose`` policy's chunks go to the arm as timed plans (the policy server's
    default); False: each tick's pose becomes a twist (its ``plans:=false``).
    ``randomization``: a sim parameter file (``sim/randomization.yaml``'s terms, or sysid's
    fitted one): the model's physics, lights and cameras drawn per episode from its seed, as a
    stand-in for a robot that is not the nominal sim. The env's own latency and sensor noise do
    not apply here: the server's engine drives the arm directly (``latency`` is inference's).

    The graph's timing is not one number, and a policy tuned to one timing can fail on another (a
    residual at 98% here with fixed timing made 42% through the graph): ``latency`` may be a
    (low, high) range, drawn per chunk (the graph's inference took 72 ms at the median, 140 ms at
    p99); ``lags`` = (observation, command) are the most the DDS hops and the mux's own timer add,
    drawn per episode in whole ticks: the age of what the server reads, the delay from the mux to
    the arm. All draws come from the episode's seed. ``settle``: how long a success must hold
    before it counts (the evaluator's half second; longer asks a policy to stay, not to time).
    ``rollout`` evaluates with it; ``rl.residual_env.ServedResidualAdapter`` trains through it."""

    def __init__(self, policy: Policy, recipe: Recipe, task: str, blend: str = "ensemble", replan_every: int = 4,
                 control_hz: float = ServerConfig.control_hz, latency: float | tuple[float, float] = 0.0,
                 plans: bool = True, randomization: str | dict | None = None,
                 lags: tuple[float, float] = (0.0, 0.0), settle: float = SUCCESS_SETTLE_S):
        from robot_learning.sim.env import WorkcellEnv

        s = policy.spec
        self.streams = {name: recipe.streams[name].topic for name in
                        sorted({k.split(".", 1)[0] for k in s.obs_keys} | set(s.image_keys))}
        self.env = WorkcellEnv(task, control_hz=1.0 / s.dt, randomization=randomization)
        self.cell = cell = self.env.cell
        self.clock = {"t": 0.0}
        self.core = PolicyServerCore(policy, ServerConfig(control_hz=control_hz, blend=blend,
                                                          replan_every=replan_every, max_obs_age=np.inf),
                                     lambda: self.clock["t"], log=lambda m: None)
        self.plans = plans and self.core.plannable   # a tcp_pose policy without per-tick corrections
        self.latency = latency if isinstance(latency, tuple) else (latency, latency)
        self.lags, self.settle = lags, settle
        # timer ticks per policy step, each a whole number of the sim's control periods
        per_step = max(1, round(s.dt / cell.control_dt))
        sub = max(1, min(per_step, round(s.dt * control_hz)))
        while per_step % sub:
            sub -= 1
        self.sub, self.tick_s = sub, per_step // sub * cell.control_dt

    def reset(self, seed: int) -> None:
        from robot_learning.teleop.mux import CommandMux

        self.env.reset(seed=seed)
        self.core.resume()
        self.mux = CommandMux()
        self.t_action = -np.inf
        self.pending = None  # (due time, chunk) of the inference in flight
        self.version = 0     # of the newest plan sent
        self.t0 = self.cell.time
        self.t_ok: float | None = None  # when success was first seen
        self.rng = np.random.default_rng([seed, 0x1A7])  # the timing's draws, apart from the sim's
        self.obs_lag, self.cmd_lag = (int(self.rng.integers(0, round(d / self.tick_s) + 1)) for d in self.lags)
        self.seen: list[tuple] = []    # the newest (stamp, observations), the oldest the one the server reads
        self.sent: list = []           # the mux's outputs on their way to the arm

    def judge(self) -> bool | None:
        """After a step, the verdict as the graph's evaluator gives it: success first seen, then
        judged again ``settle`` later (a peg pulled out again, a cube knocked off, is a failure);
        None until then."""
        ok = self.cell.success()
        if self.t_ok is None and ok:
            self.t_ok = self.cell.time
        if self.t_ok is not None and self.cell.time - self.t_ok >= self.settle - 1e-9:
            return bool(ok)
        return None

    @property
    def fault(self) -> str | None:
        """The protective stop that ended the episode: the arm refuses commands until reset."""
        return self.cell.controller.fault

    def step(self) -> None:
        """One policy step of the server's ticks, each followed by its share of the physics."""
        from robot_learning.control.safety import CommandRejected
        from robot_learning.transforms import xyzw_to_wxyz

        cell, core, mux = self.cell, self.core, self.mux
        for _ in range(self.sub):
            if self.fault is not None:
                break
            t = self.clock["t"] = cell.time - self.t0 + self.tick_s
            now = (t, {name: topic_sample(cell, topic) for name, topic in self.streams.items()})
            self.seen = [*self.seen[len(self.seen) - self.obs_lag:], now]
            stamp, values = self.seen[0]   # stamped when sampled, as the sim node stamps its messages
            for name, value in values.items():
                core.add_sample(name, stamp, value)
            if self.pending is None and (win := core.inference_due(t)) is not None:
                self.pending = (t + self.rng.uniform(*self.latency), core.run_policy(win))
            if self.pending is not None and t >= self.pending[0] - 1e-9:
                core.deliver(*self.pending[1])
                self.pending = None
            if self.plans:
                if (plan := core.plan(t, self.version)) is not None:
                    self.version, offsets, acts = plan
                    try:  # a refused plan (outside the box) is not executed, as on the arm
                        cell.controller.command_tcp_plan(offsets, acts[:, :3], xyzw_to_wxyz(acts[:, 3:7]),
                                                         cell.time, start=cell.time)
                    except CommandRejected:
                        pass
                    mux.set_policy_plan(t)
                a = core.due_action(t)
                if a is not None and len(a) > 7:
                    mux.set_policy(None, float(a[7]), t)
            elif (a := core.tick(t)) is not None:
                self.t_action = t
                mux.set_policy(a[:6], float(a[6]), t)
            elif t - self.t_action < HOLD_TWIST_S:  # the server's hold: zero twist, then quiet
                mux.set_policy(np.zeros(6), None, t)
            self.sent.append(mux.step(t))
            if len(self.sent) > self.cmd_lag:
                out = self.sent.pop(0)
                if out.moving:  # the mux goes quiet once at rest; the arm's watchdog holds
                    cell.controller.command_twist(out.twist, cell.time)
                if out.gripper is not None and out.source != "hold":
                    cell.controller.command_gripper(out.gripper, cell.time)
            cell.advance(self.tick_s)

    def episode(self, seed: int, max_steps: int = 0, each_step=None) -> tuple[bool, int]:
        """One whole episode: (the evaluator's verdict, policy steps taken). ``max_steps``: steps
        before it counts as failed (0: the task's limit), though a success seen is judged past
        it; ``each_step()`` runs after every step (a video's frame)."""
        self.reset(seed)
        limit, steps = max_steps or self.cell.task.max_steps, 0
        while steps < limit or self.t_ok is not None:
            if self.fault is not None:
                # a protective stop (the arm blocked or collided) ends the episode as a failure,
                # as it does on the robot: the arm refuses commands until reset
                return False, steps
            steps += 1
            self.step()
            if each_step is not None:
                each_step()
            if (verdict := self.judge()) is not None:
                return verdict, steps
        return False, steps

    def close(self) -> None:
        self.env.close()


def rollout(policy: Policy, recipe: Recipe, task: str, seeds: list[int], blend: str = "ensemble",
            replan_every: int = 4, record_video: int = 0, progress: bool = False,
            control_hz: float = ServerConfig.control_hz, latency: float | tuple[float, float] = 0.0, max_steps: int = 0,
            plans: bool = True, randomization: str | dict | None = None,
            lags: tuple[float, float] = (0.0, 0.0)) -> list[RolloutResult]:
    """One episode per seed through the server's engine (``ServedSim``, which says what the
    other arguments do); the first ``record_video`` episodes keep front-camera frames.
    ``max_steps``: policy steps before an episode counts as failed (0: the task's limit; a
    smaller one gives a quick look during training)."""
    sim = ServedSim(policy, recipe, task, blend, replan_every, control_hz, latency, plans, randomization, lags)
    results = []
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-1 inference: one thread is fastest, and never oversubscribes a small CPU
    try:
        for n, seed in enumerate(tqdm(seeds, desc="rollouts", unit="ep", disable=not progress, leave=False)):
            frames: list[np.ndarray] = []
            film = (lambda frames=frames: frames.append(sim.env.render())) if n < record_video else None
            before = sim.core.rejected_chunks
            success, steps = sim.episode(seed, max_steps, film)
            refused = sim.core.rejected_chunks - before
            results.append(RolloutResult(seed, bool(success), steps, frames, sim.fault, refused,
                                         sim.core.last_reject if refused else ""))
    finally:
        torch.set_num_threads(threads)
        sim.close()
    return results
