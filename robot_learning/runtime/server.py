"""The policy server's engine, without ROS: observation buffers in, timed actions out.

An inference thread builds the input from the buffers, runs the policy and hands the chunk
to the scheduler; the control timer (the ROS node's, or a test's loop) calls ``tick(now)``
at the control rate and gets the action due, or ``None`` to hold. A chunk with a NaN/Inf or
an action outside the policy's bounds is refused whole and counted: it never reaches the
arm. Every stage is timed for /policy/diagnostics.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robot_learning.runtime.actions import TCP_POSE_KEY, check_action_kind, pose_command
from robot_learning.runtime.buffers import ObsBuffers
from robot_learning.runtime.policy import Policy
from robot_learning.runtime.scheduler import ChunkScheduler, SchedulerConfig

HOLD_TWIST_S = 0.3  # a starved server sends zero twists this long, then goes quiet (the arm's watchdog holds)


@dataclass
class ServerConfig:
    control_hz: float = 50.0        # how often a command goes out
    blend: str = "ensemble"         # ensemble, crossfade or replace (see runtime.scheduler)
    ensemble_k: float = 0.1
    crossfade_s: float = 0.2
    interpolate: bool = True
    replan_every: int = 4           # policy steps between the observation times of two inferences
    max_obs_age: float = 0.5        # s: a newest observation older than this is not used (sensor lost)
    # s: the arm's command-to-motion latency (``robot-learning calibrate latency``): the action due
    # this much later is sent now, so that the arm moves as planned when the plan said
    actuation_latency: float = 0.0


def _percentiles(xs) -> dict[str, float]:
    if not xs:
        return {}
    a = np.asarray(xs) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "n": len(a)}


class PolicyServerCore:
    def __init__(self, policy: Policy, cfg: ServerConfig, clock: Callable[[], float],
                 log: Callable[[str], None] = print):
        self.cfg, self.clock, self.log = cfg, clock, log
        self.lock = threading.Lock()
        self.paused = True
        self.rejected_chunks = 0
        self.last_reject = ""
        self.stats: dict[str, deque] = {k: deque(maxlen=2000) for k in
                                        ("align", "infer", "obs_to_chunk", "tick_interval", "tick")}
        self._last_tick: float | None = None
        self._last_obs_t: float | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.set_policy(policy)

    # --- policy and state ---
    def set_policy(self, policy: Policy) -> None:
        s = policy.spec
        check_action_kind(s.action_kind)
        if s.action_kind == "tcp_pose" and TCP_POSE_KEY not in s.obs_keys:
            raise ValueError(f"a tcp_pose policy must observe {TCP_POSE_KEY}: the server tracks its plan against it")
        with self.lock:
            self.policy = policy
            self.buffers = ObsBuffers(s.obs_keys, s.image_keys, s.obs_horizon, s.dt, s.image_size,
                                      image_rois=s.image_rois)
            self.scheduler = ChunkScheduler(SchedulerConfig(s.dt, self.cfg.blend, self.cfg.ensemble_k,
                                                            self.cfg.crossfade_s, self.cfg.interpolate))
            self._last_obs_t = None
            self.shaping = self._task_shaping(policy)

    def _task_shaping(self, policy: Policy):
        """The task whose action shaping the server applies each tick, or None. A task like
        peg_insert shapes every action in the env (speed caps, a slow descent near contact, the
        hand kept in a box, the gripper closed), and RL on top of a base (a residual, DSRL)
        learns in that env: it leans on the shaping, and sent unshaped the same policy pushes
        the peg into the block until the arm's monitor stops it (8% against 68%;
        ``docs/learning.md``). A base cloned from demonstrations learnt from the arm's own
        motion, goes out as a plan and is left alone (shaped as twists it fell from 14% to 0%),
        as is an env-trained SAC agent, whose plug-in shapes its own actions."""
        s = policy.spec
        if not s.task or getattr(policy, "base", None) is None:
            return None
        from robot_learning.sim.tasks import TASKS, make_task

        if s.task not in TASKS:
            return None
        task = make_task(s.task)
        if not task.shaping_keys:
            return None
        missing = [k for k in task.shaping_keys if k not in s.obs_keys]
        if missing:
            self.log(f"the {s.task} task shapes its actions from {', '.join(task.shaping_keys)}, but this policy "
                     f"observes no {', '.join(missing)}: its actions go to the arm as it outputs them")
            return None
        return task

    @property
    def streams(self) -> list[str]:
        return self.buffers.streams

    def pause(self) -> None:
        with self.lock:
            self.paused = True
            self.scheduler.clear()

    def resume(self) -> None:
        """A fresh start: old observations and plans are forgotten, the policy is reset."""
        with self.lock:
            self.buffers.clear()
            self.scheduler.clear()
            self._last_obs_t = None
            self._last_tick = None  # the pause is not a late tick
            self.policy.reset()
            self.paused = False
        self._wake.set()

    def add_sample(self, stream: str, t: float, arrays: dict[str, np.ndarray]) -> None:
        with self.lock:
            self.buffers.add(stream, t, arrays)
        self._wake.set()

    # --- the control timer ---
    def tick(self, now: float) -> np.ndarray | None:
        """The action due now, or None: hold (paused, starved, or nothing valid)."""
        t0 = time.perf_counter()
        if self._last_tick is not None:
            self.stats["tick_interval"].append(t0 - self._last_tick)
        self._last_tick = t0
        with self.lock:
            a = None if self.paused else self.scheduler.due(now + self.cfg.actuation_latency)
            s = self.policy.spec
            if a is not None and hasattr(self.policy, "correct"):
                a = self._corrected(a, now)
            if a is not None and s.action_kind != "twist":
                tcp = self.buffers.newest(TCP_POSE_KEY)
                fresh = tcp is not None and now - tcp[0] <= self.cfg.max_obs_age
                a = pose_command(a, tcp[1], s.dt) if fresh else None   # no TCP pose to track against: hold
            if a is not None and self.shaping is not None:
                a = self._shaped(a, now)
        self.stats["tick"].append(time.perf_counter() - t0)
        return a

    def _corrected(self, a: np.ndarray, now: float) -> np.ndarray | None:
        """A per-tick policy's correction (a residual) of the action due, from the newest
        observation; held (None) when that observation is stale or the result is not finite
        or leaves the policy's bounds, like a refused chunk."""
        newest = self._fresh(self.policy.spec.obs_keys, now)
        if newest is None:
            return None
        out = np.asarray(self.policy.correct(a, newest), np.float64)
        s = self.policy.spec
        if out.shape != a.shape or not np.all(np.isfinite(out)) or np.any(out < s.action_low) \
                or np.any(out > s.action_high):
            self.rejected_chunks += 1
            self.last_reject = f"per-tick correction {np.round(out, 3).tolist()} refused"
            return None
        return out

    def _shaped(self, a: np.ndarray, now: float) -> np.ndarray | None:
        """The due twist as the policy's task lets it through (``Task.shape_observed``) from the
        newest poses it needs; held (None) when one of them is stale."""
        state = self._fresh(self.shaping.shaping_keys, now)
        return None if state is None else self.shaping.shape_observed(a, state, self.policy.spec.dt)

    def _fresh(self, keys, now: float) -> dict[str, np.ndarray] | None:
        """The newest value of each of ``keys``, or None when one is missing or older than
        ``max_obs_age`` (the tick then holds rather than act on a stale view)."""
        out = {}
        for key in keys:
            got = self.buffers.newest(key)
            if got is None or now - got[0] > self.cfg.max_obs_age:
                return None
            out[key] = got[1]
        return out

    @property
    def plannable(self) -> bool:
        """Chunks may go to the arm as timed plans: a ``tcp_pose`` policy without per-tick
        corrections or task shaping. A residual corrects each tick's action from the newest
        observation, and a task's shaping caps each tick's twist from the pose now; a plan sent
        ahead would carry the base's poses alone and neither would reach the arm."""
        return (self.policy.spec.action_kind == "tcp_pose" and not hasattr(self.policy, "correct")
                and self.shaping is None)

    def plan(self, now: float, since: int) -> tuple[int, np.ndarray, np.ndarray] | None:
        """A ``tcp_pose`` policy's plan, when a chunk has arrived since version ``since``:
        (version, seconds after now each pose is to be reached [K], actions [K, A]). A pose
        action is where the TCP should be one policy step after the action is due, so each
        knot lies one step after its action's due time. None: no new chunk (or paused)."""
        with self.lock:
            if self.paused or not self.plannable or self.scheduler.version == since:
                return None
            version = self.scheduler.version
            plan = self.scheduler.plan(now)
        if plan is None:
            return None
        offsets, actions = plan
        actions = actions.copy()
        # a diffusion policy predicts each quaternion component on its own: the plan carries
        # the rotation it means, unit length (the arm refuses anything else)
        q = actions[:, 3:7]
        n = np.linalg.norm(q, axis=1, keepdims=True)
        actions[:, 3:7] = np.where(n > 1e-6, q / np.maximum(n, 1e-12), [0.0, 0.0, 0.0, 1.0])
        return version, offsets + self.policy.spec.dt, actions

    def due_action(self, now: float) -> np.ndarray | None:
        """The blended action due now, as the policy wrote it (a plan's gripper comes from it)."""
        with self.lock:
            return None if self.paused else self.scheduler.due(now + self.cfg.actuation_latency)

    # --- inference ---
    def inference_due(self, now: float) -> tuple[float, dict] | None:
        """The observation window to infer from now, or None (paused, no fresh observations, or
        the current plan still runs and the next replanning time has not come)."""
        with self.lock:
            if self.paused:
                return None
            t_start = time.perf_counter()
            t_ref = self.buffers.reference_time()
            if t_ref is None or now - t_ref > self.cfg.max_obs_age:
                return None
            s = self.policy.spec
            if self._last_obs_t is not None and t_ref < self._last_obs_t + self.cfg.replan_every * s.dt - 1e-6 \
                    and self.scheduler.horizon(now) > 0:
                return None
            win = self.buffers.window()
            self.stats["align"].append(time.perf_counter() - t_start)
            return win

    def infer_once(self) -> bool:
        """One inference if one is due; returns whether it ran (tests call it directly)."""
        win = self.inference_due(self.clock())
        if win is None:
            return False
        self.deliver(*self.run_policy(win))
        return True

    def run_policy(self, win: tuple[float, dict]) -> tuple[float, np.ndarray, Policy]:
        """(observation time, chunk, the policy that made it): the slow part, outside the lock."""
        t_ref, obs = win
        policy = self.policy
        t0 = time.perf_counter()
        chunk = np.asarray(policy.act(obs), np.float64)
        self.stats["infer"].append(time.perf_counter() - t0)
        return t_ref, chunk, policy

    def deliver(self, t_ref: float, chunk: np.ndarray, policy: Policy) -> None:
        """Checks a finished chunk and hands it to the scheduler at the clock's now (its actions
        already due by then are dropped as stale). Env rollouts call it late to act out latency."""
        s = policy.spec
        problem = ""
        if chunk.ndim != 2 or chunk.shape[1] != s.action_dim:
            problem = f"chunk shape {chunk.shape}, expected [N, {s.action_dim}]"
        elif not np.all(np.isfinite(chunk)):
            problem = "NaN/Inf in the actions"
        elif np.any(chunk < s.action_low) or np.any(chunk > s.action_high):
            worst = np.max(np.maximum(chunk - s.action_high, s.action_low - chunk), axis=0)
            problem = f"actions outside the policy's bounds (by up to {np.round(worst, 3).tolist()})"
        with self.lock:
            self._last_obs_t = t_ref
            if problem:
                self.rejected_chunks += 1
                self.last_reject = problem
                self.scheduler.clear()  # hold rather than finish a plan the policy no longer stands by
            elif not self.paused and policy is self.policy:
                now = self.clock()
                self.scheduler.add(t_ref, chunk, now)
                self.stats["obs_to_chunk"].append(now - t_ref)
        if problem:
            self.log(f"refused a chunk: {problem}; holding")

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.infer_once():
                    self._wake.wait(0.005)
                    self._wake.clear()
        except BaseException as e:  # surfaced by the node: a dead inference thread must not go unnoticed
            self.error = e
            self.log(f"inference failed: {type(e).__name__}: {e}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="policy-inference", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    # --- diagnostics ---
    def diagnostics(self) -> dict:
        with self.lock:
            now = self.clock()
            out = {"paused": self.paused, "action_kind": self.policy.spec.action_kind,
                   "horizon_s": self.scheduler.horizon(now),
                   "dropped_stale_actions": self.scheduler.dropped_stale,
                   "dropped_chunks": self.scheduler.dropped_chunks, "rejected_chunks": self.rejected_chunks,
                   "last_reject": self.last_reject, "missing_streams": self.buffers.missing(),
                   "inference_alive": self._thread is not None and self._thread.is_alive()}
        for k, v in self.stats.items():
            out[k] = _percentiles(list(v))
        iv = list(self.stats["tick_interval"])
        if iv:
            out["jitter_ms"] = float(np.std(iv) * 1e3)
        return out
