"""Domain randomization and latency injection, as configuration (``sim/randomization.yaml``).

A policy that only ever saw one mass, one light and one camera pose learns those; on a real
cell every one of them is a little different. Each episode draws its own values from the
ranges in the file, seeded by the episode's seed (so an episode can be replayed exactly), and
the draw is logged with the episode. Everything is relative to the nominal model, restored
before each draw, so draws never compound.

What can be randomized (every section and key optional; absent means nominal):

- ``objects``: ``mass_scale``, ``friction_scale``, ``size_scale`` ([low, high] factors) of the
  task's movable objects (not fixtures such as the hole, whose clearance is the task);
- ``arm``: ``damping_scale``, ``armature_scale``, ``kp_scale``, ``kv_scale`` (factors of the
  joints' damping and armature and the servos' gains) and ``friction_nm`` (joint friction
  loss, N m): what system identification fits, as ranges of one value;
- ``lighting``: ``diffuse``, ``ambient`` ([low, high] intensities of the scene light and the
  headlight), ``direction_deg`` (the light's tilt from vertical, at most);
- ``colors``: ``objects``, ``table``, ``floor`` (per-channel jitter of the RGB, at most);
- ``cameras``: ``position_m``, ``rotation_deg`` (jitter of every camera's mounting, at most);
- ``sensors``: ``joint_position``, ``joint_velocity``, ``wrench_force``, ``wrench_torque``,
  ``tactile``, ``pixels`` (standard deviations of Gaussian noise on what is observed);
- ``latency``: ``action_s``, ``observation_s`` ([low, high] seconds, drawn per episode);
- ``control``: ``period_jitter`` (each env step lasts its period times 1 +- this, at most).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mujoco
import numpy as np

from robot_learning.config import ConfigError, load_yaml

SECTIONS = {
    "objects": ("mass_scale", "friction_scale", "size_scale"),
    "arm": ("damping_scale", "armature_scale", "kp_scale", "kv_scale", "friction_nm"),
    "lighting": ("diffuse", "ambient", "direction_deg"),
    "colors": ("objects", "table", "floor"),
    "cameras": ("position_m", "rotation_deg"),
    "sensors": ("joint_position", "joint_velocity", "wrench_force", "wrench_torque", "tactile", "pixels"),
    "latency": ("action_s", "observation_s"),
    "control": ("period_jitter",),
}
RANGES = {"mass_scale", "friction_scale", "size_scale", "diffuse", "ambient", "action_s", "observation_s",
          "damping_scale", "armature_scale", "kp_scale", "kv_scale", "friction_nm"}


def load_randomization(path: str | Path | dict | None) -> dict[str, dict[str, Any]]:
    """The randomization file, checked: known sections and keys, ranges as [low, high] with
    low <= high, jitters and noise as non-negative numbers. None or "": no randomization."""
    if not path:
        return {}
    d = dict(path) if isinstance(path, dict) else load_yaml(path)
    src = d.pop("_source", "randomization")
    out: dict[str, dict[str, Any]] = {}
    for section, body in d.items():
        if section not in SECTIONS:
            raise ConfigError(f"{src}: unknown section '{section}' (known: {', '.join(SECTIONS)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{src}: '{section}' must map keys to values")
        for key, v in body.items():
            if key not in SECTIONS[section]:
                raise ConfigError(f"{src}: unknown key '{section}.{key}' (known: {', '.join(SECTIONS[section])})")
            if key in RANGES:
                ok = (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
                      and v[0] <= v[1] and v[0] >= 0)
                if not ok:
                    raise ConfigError(f"{src}: '{section}.{key}' must be [low, high] with 0 <= low <= high, not {v!r}")
                v = [float(v[0]), float(v[1])]
            elif not (isinstance(v, (int, float)) and v >= 0):
                raise ConfigError(f"{src}: '{section}.{key}' must be a number >= 0, not {v!r}")
            out.setdefault(section, {})[key] = v if key in RANGES else float(v)
    return out


@dataclass
class Draw:
    """One episode's values: the physical ones are set in the model already; the rest (noise,
    latencies, period jitter) are for whoever observes and steps the sim to apply."""
    values: dict[str, Any] = field(default_factory=dict)
    sensors: dict[str, float] = field(default_factory=dict)
    action_latency: float = 0.0
    observation_latency: float = 0.0
    period_jitter: float = 0.0


class Randomizer:
    """Draws and applies a configuration to one MuJoCo model, from its nominal values."""

    def __init__(self, cfg: dict[str, dict[str, Any]], model: mujoco.MjModel, object_bodies: list[int],
                 arm_dofs: np.ndarray | None = None, arm_actuators: np.ndarray | None = None):
        self.cfg, self.model = cfg, model
        self.arm_dofs = np.asarray(arm_dofs if arm_dofs is not None else [], int)
        self.arm_actuators = np.asarray(arm_actuators if arm_actuators is not None else [], int)
        self.object_geoms = np.flatnonzero(np.isin(model.geom_bodyid, object_bodies))
        self.object_bodies = np.asarray(object_bodies, int)
        self.nominal = {k: getattr(model, k).copy() for k in (
            "body_mass", "body_inertia", "geom_friction", "geom_size", "geom_rbound", "geom_rgba", "mat_rgba",
            "light_diffuse", "light_ambient", "light_dir", "cam_pos", "cam_quat", "dof_damping", "dof_armature",
            "dof_frictionloss", "actuator_gainprm", "actuator_biasprm")}
        self.nominal_headlight = (model.vis.headlight.diffuse.copy(), model.vis.headlight.ambient.copy())

    @property
    def enabled(self) -> bool:
        return bool(self.cfg)

    def restore(self) -> None:
        for k, v in self.nominal.items():
            getattr(self.model, k)[:] = v
        self.model.vis.headlight.diffuse[:], self.model.vis.headlight.ambient[:] = self.nominal_headlight

    def draw(self, seed: int | None) -> Draw:
        """Restore the nominal model, then set this episode's values (seeded by ``seed``)."""
        self.restore()
        if not self.cfg:
            return Draw()
        # a stream of its own: the task's object placement from the same seed is unchanged
        rng = np.random.default_rng([0 if seed is None else int(seed), 0x5EED])
        m, c, out = self.model, self.cfg, Draw()
        obj = c.get("objects", {})
        if "mass_scale" in obj:
            s = rng.uniform(*obj["mass_scale"], len(self.object_bodies))
            m.body_mass[self.object_bodies] *= s
            m.body_inertia[self.object_bodies] *= s[:, None]
            out.values["mass_scale"] = s.round(4).tolist()
        if "friction_scale" in obj:
            s = rng.uniform(*obj["friction_scale"])
            m.geom_friction[self.object_geoms, 0] *= s
            out.values["friction_scale"] = round(float(s), 4)
        if "size_scale" in obj:
            s = rng.uniform(*obj["size_scale"])
            m.geom_size[self.object_geoms] *= s
            m.geom_rbound[self.object_geoms] *= s
            out.values["size_scale"] = round(float(s), 4)
        arm = c.get("arm", {})
        dofs, acts = self.arm_dofs, self.arm_actuators
        for key, table in (("damping_scale", "dof_damping"), ("armature_scale", "dof_armature")):
            if key in arm and len(dofs):
                v = rng.uniform(*arm[key])
                getattr(m, table)[dofs] *= v
                out.values[key] = round(float(v), 4)
        if "friction_nm" in arm and len(dofs):
            v = rng.uniform(*arm["friction_nm"])
            m.dof_frictionloss[dofs] = v
            out.values["friction_nm"] = round(float(v), 4)
        if "kp_scale" in arm and len(acts):  # a position servo: force = kp (target - q) - kv qdot
            v = rng.uniform(*arm["kp_scale"])
            m.actuator_gainprm[acts, 0] *= v
            m.actuator_biasprm[acts, 1] *= v
            out.values["kp_scale"] = round(float(v), 4)
        if "kv_scale" in arm and len(acts):
            v = rng.uniform(*arm["kv_scale"])
            m.actuator_biasprm[acts, 2] *= v
            out.values["kv_scale"] = round(float(v), 4)
        light = c.get("lighting", {})
        if "diffuse" in light:
            v = rng.uniform(*light["diffuse"])
            m.light_diffuse[:] = v
            m.vis.headlight.diffuse[:] = v * 0.8
            out.values["light_diffuse"] = round(float(v), 4)
        if "ambient" in light:
            v = rng.uniform(*light["ambient"])
            m.vis.headlight.ambient[:] = v
            out.values["light_ambient"] = round(float(v), 4)
        if light.get("direction_deg", 0) > 0 and m.nlight:
            tilt, az = np.radians(rng.uniform(0, light["direction_deg"])), rng.uniform(0, 2 * np.pi)
            m.light_dir[:] = [np.sin(tilt) * np.cos(az), np.sin(tilt) * np.sin(az), -np.cos(tilt)]
            out.values["light_tilt_deg"] = round(float(np.degrees(tilt)), 2)
        col = c.get("colors", {})
        for key, ids, table in (("objects", self.object_geoms, "geom_rgba"),
                                ("table", self._material("table"), "mat_rgba"),
                                ("floor", self._material("floor"), "mat_rgba")):
            if col.get(key, 0) > 0 and len(ids):
                arr = getattr(m, table)
                arr[ids, :3] = np.clip(arr[ids, :3] + rng.uniform(-col[key], col[key], (len(ids), 3)), 0, 1)
                out.values[f"color_{key}"] = arr[ids, :3].round(3).tolist()
        cam = c.get("cameras", {})
        if cam and m.ncam:
            if cam.get("position_m", 0) > 0:
                m.cam_pos[:] += rng.uniform(-cam["position_m"], cam["position_m"], m.cam_pos.shape)
            if cam.get("rotation_deg", 0) > 0:
                for i in range(m.ncam):
                    axis = rng.normal(size=3)
                    dq = np.zeros(4)
                    mujoco.mju_axisAngle2Quat(dq, axis / np.linalg.norm(axis),
                                              np.radians(rng.uniform(0, cam["rotation_deg"])))
                    q = np.zeros(4)
                    mujoco.mju_mulQuat(q, m.cam_quat[i], dq)
                    m.cam_quat[i] = q
            out.values["camera_pos_offset_m"] = (m.cam_pos - self.nominal["cam_pos"]).round(4).tolist()
        out.sensors = dict(c.get("sensors", {}))
        lat = c.get("latency", {})
        if "action_s" in lat:
            out.action_latency = float(rng.uniform(*lat["action_s"]))
            out.values["action_latency_s"] = round(out.action_latency, 4)
        if "observation_s" in lat:
            out.observation_latency = float(rng.uniform(*lat["observation_s"]))
            out.values["observation_latency_s"] = round(out.observation_latency, 4)
        out.period_jitter = float(c.get("control", {}).get("period_jitter", 0.0))
        return out

    def _material(self, name: str) -> np.ndarray:
        i = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_MATERIAL, name)
        return np.array([i] if i >= 0 else [], int)


def add_noise(sensors: dict[str, float], rng: np.random.Generator, **values: np.ndarray) -> dict[str, np.ndarray]:
    """``values`` with their configured noise, keyed by what they are: joint_position,
    joint_velocity, tactile, ``wrench`` (force then torque, noised by wrench_force and
    wrench_torque), and images as ``pixels``, ``pixels_<camera>`` or a ``*_color`` stream (kept
    uint8); ``kind|name`` keys several values of one kind. Keys without noise come back as
    they were."""
    out = {}
    for k, v in values.items():
        kind = k.split("|", 1)[0]  # "kind|name": several values of one kind
        kind = "pixels" if kind.startswith("pixels") or kind.endswith("_color") else kind
        std = sensors.get(kind, 0.0)
        if kind == "wrench" and (sensors.get("wrench_force") or sensors.get("wrench_torque")):
            v = np.asarray(v, float) + np.r_[rng.normal(0, sensors.get("wrench_force", 0.0), 3),
                                             rng.normal(0, sensors.get("wrench_torque", 0.0), 3)]
        elif std > 0 and kind == "pixels":
            v = np.clip(np.asarray(v, float) + rng.normal(0, std, np.shape(v)), 0, 255).astype(np.uint8)
        elif std > 0:
            v = np.asarray(v, float) + rng.normal(0, std, np.shape(v))
        out[k] = v
    return out
