"""Workcell tasks: the objects they add, how they randomize, when they succeed.

A task reads its numbers from sim/tasks/<name>.yaml. Objects that the robot can move are
free bodies; fixtures (target pad, hole block) are mocap bodies so a reset can place them
without rebuilding the model.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from robot_learning.config import load_yaml
from robot_learning.sim.model import VISUAL_ONLY, WORLD_COLLISION
from robot_learning.transforms import axis_angle_quat, orientation_error, pointing_down, xyzw_to_wxyz, yaw_of

TASKS = ("pick_place", "peg_in_hole", "peg_insert")


def _yaw_quat(yaw: float) -> np.ndarray:
    return axis_angle_quat([0, 0, 1], yaw)


def _uniform(rng: np.random.Generator, lo_hi) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _pose(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A recorded pose (x y z qx qy qz qw) as position and w x y z quaternion."""
    v = np.asarray(v, float).ravel()
    return v[:3], xyzw_to_wxyz(v[3:7])


# An evaluated episode succeeds when the task's success test still holds this long after it
# first did: a cube let go and then knocked off the target, or grabbed again, is not a success.
SUCCESS_SETTLE_S = 0.5


class Task:
    """Base: object poses for observers, randomized reset, success test."""

    name = ""
    object_bodies: tuple[str, ...] = ()
    action_dims: tuple[int, ...] = ()  # the action dims a policy chooses (all when empty; see shape_action)
    shaping_keys: tuple[str, ...] = ()  # recorded poses shape_action needs: the TCP's, then the fixtures'
    progress_keys: tuple[str, ...] = ()  # recorded poses ``progress`` reads

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.max_steps = int(cfg.get("max_steps", 200))

    def xml(self) -> str:
        raise NotImplementedError

    def bind(self, model: mujoco.MjModel) -> None:
        self.body_ids = {b: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, b) for b in self.object_bodies}
        self.mocap = {b: model.body_mocapid[i] for b, i in self.body_ids.items() if model.body_mocapid[i] >= 0}
        self.qadr = {}
        for b, i in self.body_ids.items():
            if model.body_jntnum[i] == 1:
                self.qadr[b] = model.jnt_qposadr[model.body_jntadr[i]]

    def _place(self, model, data, body: str, pos, yaw: float) -> None:
        q = _yaw_quat(yaw)
        if body in self.mocap:
            data.mocap_pos[self.mocap[body]] = pos
            data.mocap_quat[self.mocap[body]] = q
        else:
            a = self.qadr[body]
            data.qpos[a:a + 3] = pos
            data.qpos[a + 3:a + 7] = q

    def object_poses(self, data: mujoco.MjData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {b: (data.xpos[i].copy(), data.xquat[i].copy()) for b, i in self.body_ids.items()}

    def reset(self, model: mujoco.MjModel, data: mujoco.MjData, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def success(self, model: mujoco.MjModel, data: mujoco.MjData, gripper_opening: float) -> bool:
        raise NotImplementedError

    def progress(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """How near success each state is, from observed poses (``progress_keys``, batched
        [n, 7] each): minus the distances still to cover, in metres; 0 for a task without a
        measure. A learner whose only reward is success at the end shapes it with this
        measure's change (potential-based shaping, which leaves the best policy as it was)."""
        return np.zeros(len(next(iter(obs.values()))))

    def hand_start(self) -> tuple[np.ndarray, float, float] | None:
        """Where the last ``reset`` wants the hand, for tasks that start with an object in it:
        TCP position, TCP yaw (pointing down) and gripper opening. None: the arm starts at home."""
        return None

    def hold(self, model: mujoco.MjModel, data: mujoco.MjData, tcp_pos: np.ndarray, tcp_quat: np.ndarray) -> None:
        """Put the held object between the fingers of a hand at this pose (see ``hand_start``)."""

    def action_bounds(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The action space a policy gets on this task, within the arm's own (``low``, ``high``):
        the arm's, unless the task narrows it as the peers scale their actions per task."""
        return low, high

    def locate(self, objects: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Take the fixtures ``shape_action`` works around from observed object poses (name ->
        position, w x y z quaternion), for a caller that did not run ``reset`` itself (the
        graph's RL actor, beside the sim node that did)."""

    def shape_action(self, action: np.ndarray, tcp_pos: np.ndarray, tcp_quat: np.ndarray, dt: float) -> np.ndarray:
        """The action the task lets through (twist[6], gripper) for the next ``dt`` seconds,
        given the TCP now: all of it, unless the task restricts motion as a robot-side env
        wrapper would."""
        return action

    def shape_observed(self, action: np.ndarray, state: dict[str, np.ndarray], dt: float) -> np.ndarray:
        """``shape_action`` from the recorded pose vectors of ``shaping_keys`` (x y z qx qy qz qw,
        as the recipes store ``*_pose.data``), for a caller that knows the robot and the fixtures
        only by what it observes: the policy server, deploying a policy trained on this task.
        The task's speed caps (``action_bounds``) come first, as the env's action space applies
        them: a pose plan tracked as twists asks for whatever speed reaches its next pose."""
        if not self.shaping_keys:
            return action
        tcp, *fixtures = self.shaping_keys
        self.locate({k.removesuffix("_pose.data"): _pose(state[k]) for k in fixtures})
        a = np.asarray(action, np.float64)
        low, high = self.action_bounds(np.full(a.shape, -np.inf), np.full(a.shape, np.inf))
        return self.shape_action(np.clip(a, low, high), *_pose(state[tcp]), dt)


def _gap(obs: dict[str, np.ndarray], a: str, b: str, dims: int = 3) -> np.ndarray:
    """The distance between two observed poses' positions (their first ``dims`` coordinates)."""
    return np.linalg.norm(np.asarray(obs[a])[:, :dims] - np.asarray(obs[b])[:, :dims], axis=1)


class PickPlace(Task):
    name = "pick_place"
    object_bodies = ("cube", "target")
    progress_keys = ("ee_pose.data", "cube_pose.data", "target_pose.data")

    def progress(self, obs):
        """The hand to the cube, then the cube over the target (a cube held sits at the TCP)."""
        return -(_gap(obs, "ee_pose.data", "cube_pose.data") + _gap(obs, "cube_pose.data", "target_pose.data", 2))

    def xml(self) -> str:
        c, t = self.cfg["cube"], self.cfg["target"]
        h = c["half_size"]
        return (
            f'<body name="cube" pos="0.5 0 {h}"><freejoint/>'
            f'<geom type="box" size="{h} {h} {h}" mass="{c["mass"]}" rgba="0.85 0.2 0.2 1" '
            f'{WORLD_COLLISION} friction="1.0 0.02 0.002" condim="4"/></body>'
            f'<body name="target" mocap="true" pos="0.5 0.2 0">'
            f'<geom type="cylinder" size="{t["radius"]} 0.001" rgba="0.2 0.75 0.3 1" {VISUAL_ONLY}/></body>'
        )

    def reset(self, model, data, rng) -> None:
        c, t = self.cfg["cube"], self.cfg["target"]
        self._place(model, data, "cube",
                    [_uniform(rng, c["spawn_x"]), _uniform(rng, c["spawn_y"]), c["half_size"]],
                    _uniform(rng, c["yaw"]))
        self._place(model, data, "target", [_uniform(rng, t["spawn_x"]), _uniform(rng, t["spawn_y"]), 0.001], 0.0)

    def success(self, model, data, gripper_opening: float) -> bool:
        s, h = self.cfg["success"], self.cfg["cube"]["half_size"]
        cube = data.xpos[self.body_ids["cube"]]
        target = data.xpos[self.body_ids["target"]]
        placed = np.linalg.norm(cube[:2] - target[:2]) <= s["max_xy_error"] and cube[2] - h <= s["max_height"]
        released = gripper_opening > 2 * h + 0.004 or not s.get("gripper_open", True)
        return bool(placed and released)


class PegInHole(Task):
    name = "peg_in_hole"
    object_bodies = ("peg", "hole")
    progress_keys = ("ee_pose.data", "peg_pose.data", "hole_pose.data")

    def progress(self, obs):
        """The hand to the peg, then the peg into the hole."""
        return -(_gap(obs, "ee_pose.data", "peg_pose.data") + self._to_seated(obs))

    def _to_seated(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """How far the peg's centre still has to go to where it is when inserted just deep
        enough (the hole's pose is at the table, its opening ``depth`` above); deeper than that
        is no further to go, so a learner shaped by it is not drawn back to the threshold, where
        the next push out undoes the insertion."""
        seated = self.cfg["hole"]["depth"] - self.cfg["success"]["min_depth"] + self.cfg["peg"]["half_length"]
        d = np.asarray(obs["peg_pose.data"])[:, :3] - np.asarray(obs["hole_pose.data"])[:, :3] - [0.0, 0.0, seated]
        d[:, 2] = np.maximum(d[:, 2], 0.0)
        return np.linalg.norm(d, axis=1)

    @property
    def hole_half(self) -> float:
        return self.cfg["peg"]["half_width"] + self.cfg["hole"]["clearance"] / 2

    def xml(self) -> str:
        p, ho = self.cfg["peg"], self.cfg["hole"]
        w, L = p["half_width"], p["half_length"]
        h, W, dz = self.hole_half, ho["block_half_width"], ho["depth"] / 2
        wall = (W - h) / 2
        walls = "".join(
            f'<geom type="box" pos="{x} {y} {dz}" size="{sx} {sy} {dz}" rgba="0.3 0.45 0.8 1" {WORLD_COLLISION}/>'
            for x, y, sx, sy in (
                (h + wall, 0, wall, W), (-h - wall, 0, wall, W),
                (0, h + wall, h, wall), (0, -h - wall, h, wall),
            )
        )
        return (
            f'<body name="peg" pos="0.5 -0.1 {L}"><freejoint/>'
            f'<geom type="box" size="{w} {w} {L}" mass="{p["mass"]}" rgba="0.9 0.65 0.15 1" '
            f'{WORLD_COLLISION} friction="1.0 0.02 0.002" condim="4"/></body>'
            f'<body name="hole" mocap="true" pos="0.5 0.15 0">{walls}</body>'
        )

    def reset(self, model, data, rng) -> None:
        p, ho = self.cfg["peg"], self.cfg["hole"]
        self._place(model, data, "peg",
                    [_uniform(rng, p["spawn_x"]), _uniform(rng, p["spawn_y"]), p["half_length"]],
                    _uniform(rng, p["yaw"]))
        self._place(model, data, "hole", [_uniform(rng, ho["spawn_x"]), _uniform(rng, ho["spawn_y"]), 0.0],
                    _uniform(rng, ho["yaw"]))

    def success(self, model, data, gripper_opening: float) -> bool:
        peg = data.xpos[self.body_ids["peg"]]
        hole = data.xpos[self.body_ids["hole"]]
        bottom = peg[2] - self.cfg["peg"]["half_length"]
        inserted = bottom <= self.cfg["hole"]["depth"] - self.cfg["success"]["min_depth"]
        return bool(inserted and np.linalg.norm(peg[:2] - hole[:2]) < self.hole_half)

    def insertion_yaw_error(self, data: mujoco.MjData) -> float:
        """Peg-to-hole yaw difference, folded to the square's quarter-turn symmetry."""
        d = yaw_of(data.xquat[self.body_ids["hole"]]) - yaw_of(data.xquat[self.body_ids["peg"]])
        return float((d + np.pi / 4) % (np.pi / 2) - np.pi / 4)


class PegInsert(PegInHole):
    """The insertion alone, as SERL and HIL-SERL pose it: the peg starts in the closed hand,
    5-10 cm above the hole, within +-5 cm and +-30 degrees of it; the hand stays pointing down
    (roll and pitch held), the gripper closed, and the TCP inside a box around the hole.
    Their "1 to 2.5 hours to near-perfect success" is measured on such tasks."""

    name = "peg_insert"
    action_dims = (0, 1, 2, 5)  # x, y, z and yaw velocities
    shaping_keys = ("ee_pose.data", "hole_pose.data")
    progress_keys = ("peg_pose.data", "hole_pose.data")

    def progress(self, obs):
        """The peg (in the hand from the start) into the hole."""
        return -self._to_seated(obs)

    def reset(self, model, data, rng) -> None:
        ho, st = self.cfg["hole"], self.cfg["start"]
        hole = np.array([_uniform(rng, ho["spawn_x"]), _uniform(rng, ho["spawn_y"]), 0.0])
        hole_yaw = _uniform(rng, ho["yaw"])
        self._place(model, data, "hole", hole, hole_yaw)
        self.hole, self.hole_yaw = hole, hole_yaw
        xy = hole[:2] + rng.uniform(-st["xy"], st["xy"], 2)
        bottom = ho["depth"] + _uniform(rng, st["height"])
        self._start = (np.r_[xy, bottom + self.tcp_above_peg_bottom],
                       hole_yaw + float(rng.uniform(-st["yaw"], st["yaw"])))

    @property
    def tcp_above_peg_bottom(self) -> float:
        """How far the held peg reaches below the TCP (the fingers hold it ``grasp_below_top``
        below its top)."""
        p = self.cfg["peg"]
        return 2 * p["half_length"] - p["grasp_below_top"]

    def hand_start(self) -> tuple[np.ndarray, float, float]:
        return self._start[0].copy(), self._start[1], 2 * self.cfg["peg"]["half_width"]

    def hold(self, model, data, tcp_pos, tcp_quat) -> None:
        centre_below_tcp = self.tcp_above_peg_bottom - self.cfg["peg"]["half_length"]
        self._place(model, data, "peg", tcp_pos - [0, 0, centre_below_tcp], yaw_of(tcp_quat))

    def locate(self, objects) -> None:
        if "hole" not in objects:
            raise RuntimeError("peg_insert keeps the hand in a box around the hole: no pose of it yet "
                               "(/sim/objects/hole/pose)")
        pos, quat = objects["hole"]
        self.hole, self.hole_yaw = np.asarray(pos, float).copy(), yaw_of(quat)

    def action_bounds(self, low, high):
        """x, y, z at ``action.linear`` and yaw at ``action.yaw`` at most: the arm's 0.5 m/s is
        5 cm a step at 10 Hz, in a box 14 cm wide, where the insertion needs a millimetre (the
        peers scale their actions to a centimetre or two a step). A squashed policy then spends
        its whole output range on speeds the task can use."""
        a = self.cfg["action"]
        low, high = np.array(low, np.float32), np.array(high, np.float32)
        cap = np.r_[[a["linear"]] * 3, np.inf, np.inf, a["yaw"], np.inf]
        return np.maximum(low, -cap).astype(np.float32), np.minimum(high, cap).astype(np.float32)

    def shape_action(self, action, tcp_pos, tcp_quat, dt) -> np.ndarray:
        """Gripper closed, roll and pitch steered back to pointing down (only yaw is the
        policy's), and the TCP's position and yaw kept in the box: each velocity is capped so
        that ``dt`` seconds of it end at the box's edge at most (the peers clip each step's
        target pose to the box; a zeroed velocity at the edge overshot it by centimetres).

        Downward, near the block's top face and in the hole, the hand goes no faster than
        ``contact_speed``. The peers' arms are compliant (impedance control); ours is
        position-servoed, and its monitor stops the arm when a joint falls behind its command:
        a peg pushed into the block at 20 cm/s tripped it within a step or two (half the
        episodes of a first run), while at a few cm/s a policy has time to back off."""
        a = np.array(action, dtype=float)
        a[3:5] = np.clip(4.0 * orientation_error(pointing_down(yaw_of(tcp_quat)), tcp_quat)[:2], -1.0, 1.0)
        a[6] = 1.0
        b, top = self.cfg["box"], self.cfg["hole"]["depth"]
        rel = tcp_pos - np.r_[self.hole[:2], top]
        lo, hi = np.r_[-b["xy"], -b["xy"], b["above_top"][0]], np.r_[b["xy"], b["xy"], b["above_top"][1]]
        a[:3] = np.clip(a[:3], np.minimum((lo - rel) / dt, 0.0), np.maximum((hi - rel) / dt, 0.0))
        if rel[2] - self.tcp_above_peg_bottom < b["slow_above"]:  # the peg's bottom near the top face, or in the hole
            a[2] = max(a[2], -b["contact_speed"])
        d = (yaw_of(tcp_quat) - self.hole_yaw + np.pi) % (2 * np.pi) - np.pi
        a[5] = np.clip(a[5], min((-b["yaw"] - d) / dt, 0.0), max((b["yaw"] - d) / dt, 0.0))
        return a


def make_task(name: str) -> Task:
    """Task by name, configured from sim/tasks/<name>.yaml."""
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}': choose one of {', '.join(TASKS)}")
    cfg = load_yaml(f"sim/tasks/{name}.yaml")
    return {"pick_place": PickPlace, "peg_in_hole": PegInHole, "peg_insert": PegInsert}[name](cfg)
