"""Scripted experts for the workcell tasks.

An expert sees what the sim node publishes (TCP pose, gripper opening, object poses, all
stamped) and answers with a TCP twist and a gripper command, so the same code drives the
gymnasium env directly and the ROS graph through ``/arm/command/twist``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robot_learning.config import load_yaml
from robot_learning.sim.tasks import make_task
from robot_learning.transforms import orientation_error, pointing_down, yaw_of


@dataclass
class ExpertObs:
    t: float                                   # seconds, any clock that advances with the sim
    tcp_pos: np.ndarray
    tcp_quat: np.ndarray                       # w x y z
    gripper_opening: float
    objects: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class Waypoint:
    pos: np.ndarray | None      # None: stay where the hand is (letting go of a peg stuck in the walls)
    yaw: float | None           # None: do not turn the hand at all (a peg in the hole cannot be turned)
    grip: float                 # gripper command while moving there
    tol: float = 0.006          # metres
    dwell: float = 0.0          # seconds to wait once there
    speed: float = 0.3          # m/s cap
    carry: str | None = None    # pos/yaw are for this held object, not for the TCP
    timeout: float = np.inf     # seconds before moving on regardless (a jammed insertion)
    retry: int | None = None    # on a timeout with the carried object still above the goal by
                                # more than 2 cm (not in the hole), go back to this waypoint


SEATED = 0.002  # a peg's bottom this far above the hole's floor: the insertion's goal


def _fold_quarter(a: float) -> float:
    return float((a + np.pi / 4) % (np.pi / 2) - np.pi / 4)


class ScriptedExpert:
    """Waypoint follower; each task turns the scene into a list of waypoints at reset."""

    GAIN = 6.0

    def __init__(self, task: str, rng: np.random.Generator | None = None):
        self.task = task
        if task == "peg_insert":  # the peg is in the hand from the start: its length from the task
            self.peg_half_length = float(load_yaml("sim/tasks/peg_insert.yaml")["peg"]["half_length"])
        # within the task's action space, as a policy on it: demonstrations it could imitate
        inf = np.full(7, np.inf)
        self.low, self.high = (b[:6] for b in make_task(task).action_bounds(-inf, inf))
        self.rng = rng or np.random.default_rng()
        self.plan: list[Waypoint] = []
        self.k = 0
        self._arrived: float | None = None
        self._started: float | None = None
        self.done = False
        self.retries = 2

    def _plan(self, obs: ExpertObs) -> list[Waypoint]:
        yaw0 = yaw_of(obs.tcp_quat)
        if self.task == "pick_place":
            cube, cq = obs.objects["cube"]
            target = obs.objects["target"][0]
            yaw = yaw0 + _fold_quarter(yaw_of(cq) - yaw0)
            return [
                Waypoint(cube + [0, 0, 0.10], yaw, 0.0, tol=0.01),
                Waypoint(cube + [0, 0, 0.0], yaw, 0.0, tol=0.004, speed=0.12),
                Waypoint(cube + [0, 0, 0.0], yaw, 1.0, dwell=0.5),
                Waypoint(cube + [0, 0, 0.12], yaw, 1.0, tol=0.01),
                Waypoint(np.r_[target[:2], 0.12], yaw, 1.0, tol=0.008),
                Waypoint(np.r_[target[:2], cube[2] + 0.004], yaw, 1.0, tol=0.004, speed=0.1),
                Waypoint(np.r_[target[:2], cube[2] + 0.004], yaw, 0.0, dwell=0.4),
                Waypoint(np.r_[target[:2], 0.15], yaw, 0.0, tol=0.01),
            ]
        if self.task == "peg_in_hole":
            peg, pq = obs.objects["peg"]
            hole, hq = obs.objects["hole"]
            half_len = peg[2]  # the peg starts upright on the table
            grasp_z = peg[2] + half_len - 0.018
            yaw = yaw0 + _fold_quarter(yaw_of(pq) - yaw0)
            # From the lift on, the peg itself is steered onto the hole axis; then let go where
            # the hand is and leave without turning: pushing or turning the hand while the peg
            # is in the walls strains the wrist against them (a protective stop).
            return [
                Waypoint(np.r_[peg[:2], grasp_z + 0.08], yaw, 0.0, tol=0.008),
                Waypoint(np.r_[peg[:2], grasp_z], yaw, 0.0, tol=0.003, speed=0.12),
                Waypoint(np.r_[peg[:2], grasp_z], yaw, 1.0, dwell=0.5),
                Waypoint(np.r_[peg[:2], grasp_z + 0.12], yaw, 1.0, tol=0.01),
                *self._insert(hole, yaw_of(hq), half_len, first=4),
                Waypoint(None, None, 0.0, dwell=0.4),
                Waypoint(np.r_[hole[:2], half_len + 0.12], None, 0.0, tol=0.01),
            ]
        if self.task == "peg_insert":  # the peg starts in the hand: the insertion alone
            hole, hq = obs.objects["hole"]
            return self._insert(hole, yaw_of(hq), self.peg_half_length, first=0)
        raise ValueError(f"no scripted expert for task '{self.task}'")

    @staticmethod
    def _insert(hole: np.ndarray, hole_yaw: float, half_len: float, first: int) -> list[Waypoint]:
        """Carry the held peg over the hole, align it, and push it down (a jam: back up to the
        approach, the plan's waypoint ``first``, and try again)."""
        return [
            Waypoint(np.r_[hole[:2], half_len + 0.09], hole_yaw, 1.0, tol=0.006, carry="peg"),
            Waypoint(np.r_[hole[:2], half_len + 0.045], hole_yaw, 1.0, tol=0.0015, speed=0.05,
                     dwell=0.2, carry="peg", timeout=4.0),
            Waypoint(np.r_[hole[:2], half_len + SEATED], hole_yaw, 1.0, tol=0.004, speed=0.04,
                     carry="peg", timeout=4.0, retry=first),
        ]

    @property
    def turning(self) -> bool:
        """Whether the hand may turn now (False once the peg is in the hole: rotation locked)."""
        return not self.plan or self.plan[min(self.k, len(self.plan) - 1)].yaw is not None

    def reset(self) -> None:
        self.plan, self.k, self._arrived, self._started, self.done = [], 0, None, None, False
        self.retries = 2

    def goal_distance(self, obs: ExpertObs) -> float | None:
        """How far the task is from done, in metres, where its goal is one place: peg_insert's
        peg from fully in the hole. None for tasks with phases (grasp, carry, place), where
        closer is not always better."""
        if self.task != "peg_insert":
            return None
        hole, peg = obs.objects["hole"][0], obs.objects["peg"][0]
        return float(np.linalg.norm(peg - np.r_[hole[:2], self.peg_half_length + SEATED]))

    def take_over(self) -> None:
        """A person taking the arm over mid-episode. peg_insert's plan starts again from its
        approach above the hole (right from anywhere in the task's box, the peg being in the hand),
        not from the waypoint the policy's wandering happened to tick off; the other tasks' plans
        go on where they are (planning afresh would send the hand back to grasp a held peg)."""
        if self.task == "peg_insert":
            self.reset()

    def label(self, obs: ExpertObs) -> tuple[np.ndarray, float]:
        """What the expert commands from this state whatever came before: DAgger's label for a
        state a policy drove the arm to. ``act`` follows its plan in order, so from a state off
        its own path (the policy already lower than the approach the plan starts with) it would
        first send the hand back up there. peg_insert only (one goal, reachable from anywhere in
        the task's box): push the peg in where it is over the hole's opening, else bring it over
        the opening at the pre-insertion height."""
        if self.task != "peg_insert":
            raise ValueError(f"the scripted expert labels arbitrary states of peg_insert only, not '{self.task}'")
        plan = self._plan(obs)
        over, seat = plan[1], plan[2]
        hole, peg = obs.objects["hole"][0], obs.objects["peg"][0]
        aligned = np.linalg.norm(peg[:2] - hole[:2]) < 2 * over.tol and peg[2] <= over.pos[2] + over.tol
        wp = seat if aligned else over
        return self._twist(*self._errors(obs, wp), wp), wp.grip

    def act(self, obs: ExpertObs) -> tuple[np.ndarray, float]:
        """TCP twist (base frame, m/s and rad/s) and gripper closure (0 open .. 1 closed)."""
        if not self.plan:
            self.plan = self._plan(obs)
        wp = self.plan[min(self.k, len(self.plan) - 1)]
        if self._started is None:
            self._started = obs.t
        err, rot_err = self._errors(obs, wp)
        twist = self._twist(err, rot_err, wp)
        there = np.linalg.norm(err) < wp.tol and np.linalg.norm(rot_err) < 0.05
        timed_out = obs.t - self._started > wp.timeout
        stuck_out = wp.carry is not None and wp.pos is not None and obs.objects[wp.carry][0][2] - wp.pos[2] > 0.02
        if timed_out and not there and stuck_out and wp.retry is not None and self.retries > 0:
            self.retries -= 1  # jammed: back up to the approach above and try once more
            self.k, self._arrived, self._started = wp.retry, None, None
            return np.zeros(6), wp.grip
        if self.k < len(self.plan) and (there or timed_out):
            if self._arrived is None:
                self._arrived = obs.t
            if obs.t - self._arrived >= wp.dwell:
                self.k += 1
                self._arrived = self._started = None
                self.done = self.k >= len(self.plan)
        return twist, wp.grip

    @staticmethod
    def _errors(obs: ExpertObs, wp: Waypoint) -> tuple[np.ndarray, np.ndarray]:
        """The TCP's position and orientation errors from waypoint ``wp`` (a carried object's
        waypoint moved to the TCP)."""
        target, yaw = (obs.tcp_pos if wp.pos is None else wp.pos), wp.yaw
        if wp.carry and wp.pos is not None:
            obj_pos, obj_quat = obs.objects[wp.carry]
            target = wp.pos + (obs.tcp_pos - obj_pos)
            if wp.yaw is not None:
                yaw = yaw_of(obs.tcp_quat) + _fold_quarter(wp.yaw - yaw_of(obj_quat))
        rot_err = np.zeros(3) if yaw is None else orientation_error(pointing_down(yaw), obs.tcp_quat)
        return target - obs.tcp_pos, rot_err

    def _twist(self, err: np.ndarray, rot_err: np.ndarray, wp: Waypoint) -> np.ndarray:
        """The twist that closes these errors toward waypoint ``wp`` (capped at its speed,
        within the task's action space)."""
        v = self.GAIN * err
        n = np.linalg.norm(v)
        if n > wp.speed:
            v *= wp.speed / n
        w = np.clip(4.0 * rot_err, -1.0, 1.0)
        return np.clip(np.concatenate([v, w]), self.low, self.high)


class HandNoise:
    """What a person's hand adds to a 6-DoF device: a slowly wandering error (an
    Ornstein-Uhlenbeck process) and now and then a short pause with the device let go.
    The expert closes the loop on the TCP pose, so it corrects the drift as a person would."""

    def __init__(self, rng: np.random.Generator, scale: float = 1.0, sigma_linear: float = 0.02,
                 sigma_angular: float = 0.06, tau: float = 0.4, pause_rate: float = 0.1,
                 pause_s: tuple[float, float] = (0.2, 0.7)):
        self.rng, self.tau = rng, tau
        self.sigma = scale * np.r_[np.full(3, sigma_linear), np.full(3, sigma_angular)]
        self.pause_rate, self.pause_s = pause_rate * scale, pause_s
        self.err = np.zeros(6)
        self.t_prev: float | None = None
        self.paused_until = -np.inf

    def apply(self, twist: np.ndarray, t: float, lock_rotation: bool = False) -> np.ndarray:
        """``lock_rotation``: the operator has locked the device's rotation axes (SpaceMouse
        devices have a button for it), as one does to push a peg straight into a hole."""
        twist = self.apply_noise(twist, t)
        if lock_rotation:
            twist = np.r_[twist[:3], 0.0, 0.0, 0.0]
        return twist

    def apply_noise(self, twist: np.ndarray, t: float) -> np.ndarray:
        dt = 0.0 if self.t_prev is None else max(0.0, t - self.t_prev)
        self.t_prev = t
        a = np.exp(-dt / self.tau)
        self.err = a * self.err + np.sqrt(1 - a * a) * self.sigma * self.rng.standard_normal(6)
        if t < self.paused_until:
            return np.zeros(6)
        if self.rng.random() < self.pause_rate * dt:
            self.paused_until = t + self.rng.uniform(*self.pause_s)
            return np.zeros(6)
        return twist + self.err
