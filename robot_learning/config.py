"""Typed views of the YAML files under hardware/, calibration/ and sim/.

One loader per file kind, so that the sim, the controller and the nodes read the same
numbers and a typo fails at start-up with the file and key named, not mid-episode.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from robot_learning.paths import resolve

DEFAULT_ROBOT = "hardware/robots/panda.yaml"
DEFAULT_CALIBRATION = "calibration/workcell.yaml"
DEFAULT_WORKCELL = "sim/workcell.yaml"


class ConfigError(ValueError):
    """A configuration file is missing a key or holds a bad value."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with an error that names the file."""
    p = resolve(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    with p.open() as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    data["_source"] = str(p)
    return data


def _get(d: dict[str, Any], key: str, src: str) -> Any:
    if key not in d:
        raise ConfigError(f"{src}: missing key '{key}'")
    return d[key]


def _vec(d: dict[str, Any], key: str, n: int, src: str) -> np.ndarray:
    v = np.asarray(_get(d, key, src), dtype=float)
    if v.shape != (n,):
        raise ConfigError(f"{src}: '{key}' must have {n} numbers, got {v.shape}")
    return v


@dataclass(frozen=True)
class SafetyLimits:
    """Everything the safety filter enforces, whoever sends the command."""

    q_lower: np.ndarray
    q_upper: np.ndarray
    qd_max: np.ndarray
    qdd_max: np.ndarray
    position_margin: float
    workspace_min: np.ndarray
    workspace_max: np.ndarray
    max_linear_speed: float
    max_angular_speed: float
    command_timeout: float
    command_max_age: float = 1.0   # s: a streamed command stamped longer ago is refused as stale
    # monitors on what the joints actually do (robot_learning.control.monitor)
    velocity_margin: float = 0.1   # measured |qd| may exceed qd_max by this fraction
    tracking_error: float = 0.25   # rad between the last command and the measured position ...
    tracking_lag: float = 0.15     # ... plus this many seconds' worth of the commanded joint speed
    state_timeout: float = 0.05    # s: an older joint state is stale
    workspace_tolerance: float = 0.01  # m the measured TCP may lie further outside the box than commanded
    # at stall_effort of its effort limit for stall_time, not advancing by stall_speed: pressing (monitor.py)
    effort_max: np.ndarray | None = None  # N m per joint (the description's limits.effort); None: no stall monitor
    stall_effort: float = 0.95
    stall_speed: float = 0.05      # rad/s
    stall_time: float = 0.15       # s

    @property
    def soft_lower(self) -> np.ndarray:
        """Where the filter keeps commands: ``position_margin`` inside the hard limits."""
        return self.q_lower + self.position_margin

    @property
    def soft_upper(self) -> np.ndarray:
        return self.q_upper - self.position_margin

    def twist_action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The range of a twist-and-gripper action (vx vy vz wx wy wz, gripper 0 open .. 1
        closed): what the arm accepts at most, so an RL policy's squashed output spans it."""
        high = np.r_[[self.max_linear_speed] * 3, [self.max_angular_speed] * 3, 1.0].astype(np.float32)
        return np.r_[-high[:6], 0.0].astype(np.float32), high


@dataclass(frozen=True)
class GripperConfig:
    name: str
    joint_names: list[str]
    max_opening: float
    max_force: float
    hand_mass: float
    finger_mass: float


@dataclass(frozen=True)
class RobotConfig:
    """An arm's kinematics, limits, home pose and drive gains."""

    name: str
    base_frame: str
    ee_frame: str
    joint_names: list[str]
    dh: np.ndarray  # (n, 3): a_{i-1}, d_i, alpha_{i-1}
    flange_offset: float
    hand_yaw: float
    tcp_offset: float
    home: np.ndarray
    links: list[dict[str, Any]]
    effort: np.ndarray
    joint_damping: float
    servo_kp: np.ndarray
    servo_kv: np.ndarray
    gripper: GripperConfig
    limits: SafetyLimits
    source: str = ""

    @property
    def dof(self) -> int:
        return len(self.joint_names)


def _monitor_limits(mon: dict[str, Any], src: str) -> dict[str, float]:
    """The measured-state monitors' thresholds (optional keys; defaults from SafetyLimits)."""
    if not isinstance(mon, dict):
        raise ConfigError(f"{src}: 'safety.monitor' must be a mapping")
    known = {"velocity_margin", "tracking_error", "tracking_lag", "state_timeout", "workspace_tolerance",
             "stall_effort", "stall_speed", "stall_time"}
    unknown = sorted(set(mon) - known)
    if unknown:
        raise ConfigError(f"{src}: unknown key(s) {unknown} in safety.monitor (known: {sorted(known)})")
    out = {k: float(v) for k, v in mon.items()}
    if any(v < 0 for v in out.values()):
        raise ConfigError(f"{src}: safety.monitor values must not be negative")
    return out


def load_robot(path: str | Path = DEFAULT_ROBOT) -> RobotConfig:
    """Load an arm description such as hardware/robots/panda.yaml."""
    d = load_yaml(path)
    src = d["_source"]
    names = list(_get(d, "joint_names", src))
    n = len(names)
    lim = _get(d, "limits", src)
    saf = _get(d, "safety", src)
    ws = _get(saf, "workspace", src)
    g = _get(d, "gripper", src)
    dh = np.asarray(_get(d, "dh", src), dtype=float)
    if dh.shape != (n, 3):
        raise ConfigError(f"{src}: 'dh' must have one [a, d, alpha] row per joint")
    limits = SafetyLimits(
        q_lower=_vec(lim, "position_lower", n, src),
        q_upper=_vec(lim, "position_upper", n, src),
        qd_max=_vec(lim, "velocity", n, src),
        qdd_max=_vec(lim, "acceleration", n, src),
        position_margin=float(lim.get("position_margin", 0.0)),
        workspace_min=_vec(ws, "min", 3, src),
        workspace_max=_vec(ws, "max", 3, src),
        max_linear_speed=float(_get(saf, "max_linear_speed", src)),
        max_angular_speed=float(_get(saf, "max_angular_speed", src)),
        command_timeout=float(_get(saf, "command_timeout", src)),
        command_max_age=float(saf.get("command_max_age", 1.0)),
        effort_max=_vec(lim, "effort", n, src),
        **_monitor_limits(saf.get("monitor", {}), src),
    )
    if np.any(limits.q_lower >= limits.q_upper):
        raise ConfigError(f"{src}: every position_lower must be below position_upper")
    home = _vec(d, "home", n, src)
    if np.any(home < limits.q_lower) or np.any(home > limits.q_upper):
        raise ConfigError(f"{src}: home pose is outside the joint limits")
    links = list(_get(d, "links", src))
    if len(links) != n:
        raise ConfigError(f"{src}: 'links' must have one entry per joint")
    return RobotConfig(
        name=str(_get(d, "name", src)),
        base_frame=str(d.get("base_frame", "base_link")),
        ee_frame=str(d.get("ee_frame", "tcp")),
        joint_names=names,
        dh=dh,
        flange_offset=float(_get(d, "flange_offset", src)),
        hand_yaw=float(d.get("hand_yaw", 0.0)),
        tcp_offset=float(_get(d, "tcp_offset", src)),
        home=home,
        links=links,
        effort=limits.effort_max,
        joint_damping=float(d.get("joint_damping", 0.0)),
        servo_kp=_vec(d, "servo_kp", n, src),
        servo_kv=_vec(d, "servo_kv", n, src),
        gripper=GripperConfig(
            name=str(_get(g, "name", src)),
            joint_names=list(_get(g, "joint_names", src)),
            max_opening=float(_get(g, "max_opening", src)),
            max_force=float(_get(g, "max_force", src)),
            hand_mass=float(_get(g, "hand_mass", src)),
            finger_mass=float(_get(g, "finger_mass", src)),
        ),
        limits=limits,
        source=src,
    )


@dataclass(frozen=True)
class CameraCalibration:
    """A camera's intrinsics and where its optical frame sits (ROS optical convention)."""

    name: str
    parent: str  # "world" or a robot frame ("hand") it is rigidly mounted on
    translation: np.ndarray
    rotation_xyzw: np.ndarray
    width: int
    height: int
    fovy_deg: float
    depth_range: tuple[float, float] = (0.07, 3.0)


@dataclass(frozen=True)
class Calibration:
    robot_base_translation: np.ndarray
    cameras: dict[str, CameraCalibration] = field(default_factory=dict)
    source: str = ""

    def at_size(self, width: int, height: int) -> Calibration:
        """Every camera streaming the same view at ``width`` x ``height`` (a RealSense's smaller
        profile of one sensor, e.g. 320x240 for 640x480): the field of view stays and the focal
        length in pixels scales. A sim renders a smaller image in less time (320x240 in half the
        CPU of 640x480 here), which is what a busy machine needs; a different aspect ratio would
        be another view, so it is refused."""
        if width <= 0 or height <= 0:
            raise ConfigError(f"camera size {width}x{height}: width and height must be positive")
        for c in self.cameras.values():
            if width * c.height != height * c.width:
                raise ConfigError(f"camera size {width}x{height} is not the {c.width}x{c.height} aspect ratio of "
                                  f"'{c.name}' in {self.source}: choose a size in proportion (e.g. "
                                  f"{c.width // 2}x{c.height // 2})")
        return replace(self, cameras={n: replace(c, width=width, height=height) for n, c in self.cameras.items()})


def load_calibration(path: str | Path = DEFAULT_CALIBRATION) -> Calibration:
    """Load camera extrinsics (calibration/) joined with intrinsics (hardware/cameras/)."""
    d = load_yaml(path)
    src = d["_source"]
    cams = {}
    for name, c in _get(d, "cameras", src).items():
        intr = load_yaml(_get(c, "intrinsics", f"{src}: cameras.{name}"))
        q = np.asarray(_get(c, "rotation_xyzw", src), dtype=float)
        if q.shape != (4,) or not np.isclose(np.linalg.norm(q), 1.0, atol=1e-3):
            raise ConfigError(f"{src}: cameras.{name}.rotation_xyzw must be a unit quaternion")
        cams[name] = CameraCalibration(
            name=name,
            parent=str(c.get("parent", "world")),
            translation=_vec(c, "translation", 3, src),
            rotation_xyzw=q / np.linalg.norm(q),
            width=int(_get(intr, "width", intr["_source"])),
            height=int(_get(intr, "height", intr["_source"])),
            fovy_deg=float(_get(intr, "fovy_deg", intr["_source"])),
            depth_range=tuple(intr.get("depth_range", (0.07, 3.0))),
        )
    rb = d.get("robot_base", {})
    return Calibration(
        robot_base_translation=np.asarray(rb.get("translation", [0, 0, 0]), dtype=float),
        cameras=cams,
        source=src,
    )
