"""Device input (Joy axes and buttons, key presses) to a TCP twist, a gripper target and events.

Every device ends up as a ``JoyTeleop``: the spacenav driver and joy_linux publish
``sensor_msgs/Joy``; a SpaceMouse read over HID and a keyboard are turned into the same
axes/buttons first. What each axis and button does is a YAML file under hardware/teleop/.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robot_learning.config import ConfigError, load_yaml

TWIST_AXES = ("x", "y", "z", "roll", "pitch", "yaw")
EVENTS = ("start_episode", "stop_success", "stop_failure", "discard_episode", "estop")


@dataclass
class AxisBinding:
    axis: int
    scale: float = 1.0           # sign and gain, applied after the deadband


@dataclass
class TeleopConfig:
    device: str
    topic: str = "/joy"
    deadband: float = 0.1
    max_linear: float = 0.15     # m/s at full deflection
    max_angular: float = 0.6     # rad/s at full deflection
    frame: str = "base"          # base or tool
    engage: str = "toggle"       # toggle (press to engage / press again) or hold (dead-man)
    engage_button: int | None = None
    axes: dict[str, AxisBinding] = field(default_factory=dict)
    gripper_close: int | None = None
    gripper_open: int | None = None
    gripper_toggle: int | None = None
    gripper_axis: int | None = None      # analog trigger: its deflection is the closing
    events: dict[str, int] = field(default_factory=dict)
    keys: dict[str, list] = field(default_factory=dict)  # keyboard: key -> [axis index, value] or button


def load_teleop_config(path: str) -> TeleopConfig:
    raw = load_yaml(path)
    try:
        axes = {}
        for name, b in (raw.get("axes") or {}).items():
            if name not in TWIST_AXES:
                raise ConfigError(f"{path}: unknown twist axis '{name}' (use {', '.join(TWIST_AXES)})")
            axes[name] = AxisBinding(int(b["axis"]), float(b.get("scale", 1.0)))
        events = {k: int(v) for k, v in (raw.get("events") or {}).items()}
        for k in events:
            if k not in EVENTS:
                raise ConfigError(f"{path}: unknown event '{k}' (use {', '.join(EVENTS)})")
        b = raw.get("buttons") or {}
        cfg = TeleopConfig(
            device=str(raw["device"]), topic=str(raw.get("topic", "/joy")),
            deadband=float(raw.get("deadband", 0.1)), max_linear=float(raw.get("max_linear", 0.15)),
            max_angular=float(raw.get("max_angular", 0.6)), frame=str(raw.get("frame", "base")),
            engage=str(raw.get("engage", "toggle")), engage_button=b.get("engage"), axes=axes,
            gripper_close=b.get("gripper_close"), gripper_open=b.get("gripper_open"),
            gripper_toggle=b.get("gripper_toggle"), gripper_axis=raw.get("gripper_axis"),
            events=events, keys=raw.get("keys") or {})
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from e
    if cfg.frame not in ("base", "tool"):
        raise ConfigError(f"{path}: frame must be 'base' or 'tool', not '{cfg.frame}'")
    if cfg.engage not in ("toggle", "hold"):
        raise ConfigError(f"{path}: engage must be 'toggle' or 'hold', not '{cfg.engage}'")
    if not 0 <= cfg.deadband < 1:
        raise ConfigError(f"{path}: deadband must be in [0, 1)")
    return cfg


def deadband(x: np.ndarray, db: float) -> np.ndarray:
    """Zero inside the band, rescaled outside it so full deflection stays full (no step at the edge)."""
    mag = np.clip((np.abs(x) - db) / (1.0 - db), 0.0, 1.0)
    return np.sign(x) * mag


@dataclass
class TeleopOutput:
    twist: np.ndarray            # 6: linear m/s, angular rad/s, in ``frame``
    gripper: float               # 0 open .. 1 closed
    engaged: bool
    events: list[str]
    frame: str


class JoyTeleop:
    """Turns successive (axes, buttons) readings into commands; button actions fire on press."""

    def __init__(self, cfg: TeleopConfig, gripper: float = 0.0):
        self.cfg = cfg
        self.engaged = False
        self.gripper = gripper
        self.prev_buttons: list[int] = []

    def _pressed(self, buttons: list[int], i: int | None) -> bool:
        if i is None or i >= len(buttons):
            return False
        was = self.prev_buttons[i] if i < len(self.prev_buttons) else 0
        return bool(buttons[i]) and not was

    def update(self, axes: list[float], buttons: list[int]) -> TeleopOutput:
        cfg = self.cfg
        ax = np.asarray(axes, np.float64)
        twist = np.zeros(6)
        for k, name in enumerate(TWIST_AXES):
            b = cfg.axes.get(name)
            if b is not None and b.axis < ax.size:
                twist[k] = deadband(np.clip(ax[b.axis:b.axis + 1], -1, 1), cfg.deadband)[0] * b.scale
        twist[:3] *= cfg.max_linear
        twist[3:] *= cfg.max_angular
        if not np.all(np.isfinite(twist)):
            twist[:] = 0.0
        eb = cfg.engage_button
        if cfg.engage == "hold":
            self.engaged = eb is not None and eb < len(buttons) and bool(buttons[eb])
        elif self._pressed(buttons, eb):
            self.engaged = not self.engaged
        if self._pressed(buttons, cfg.gripper_toggle):
            self.gripper = 0.0 if self.gripper > 0.5 else 1.0
        if self._pressed(buttons, cfg.gripper_close):
            self.gripper = 1.0
        if self._pressed(buttons, cfg.gripper_open):
            self.gripper = 0.0
        if cfg.gripper_axis is not None and cfg.gripper_axis < ax.size and np.isfinite(ax[cfg.gripper_axis]):
            # joy_linux triggers rest at +1 and read -1 fully pressed
            self.gripper = float(np.clip((1.0 - ax[cfg.gripper_axis]) / 2.0, 0.0, 1.0))
        events = [e for e, i in cfg.events.items() if self._pressed(buttons, i)]
        self.prev_buttons = list(buttons)
        return TeleopOutput(twist if self.engaged else np.zeros(6), self.gripper, self.engaged, events, cfg.frame)


class KeyboardAxes:
    """Key presses to Joy-like axes/buttons. A terminal sends no key-release, so a key counts as
    held for ``hold`` seconds after its last press (the OS auto-repeat keeps it alive)."""

    def __init__(self, cfg: TeleopConfig, hold: float = 0.12, n_axes: int = 6, n_buttons: int = 12):
        self.cfg, self.hold = cfg, hold
        self.n_axes, self.n_buttons = n_axes, n_buttons
        self.last: dict[str, float] = {}

    def press(self, key: str, t: float) -> None:
        if key in self.cfg.keys:
            self.last[key] = t

    def read(self, t: float) -> tuple[list[float], list[int]]:
        axes, buttons = [0.0] * self.n_axes, [0] * self.n_buttons
        for key, when in self.last.items():
            if t - when > self.hold:
                continue
            b = self.cfg.keys[key]
            if b[0] == "axis":
                axes[int(b[1])] += float(b[2])
            elif b[0] == "button":
                buttons[int(b[1])] = 1
        return axes, buttons


def spacemouse_hid_report(report: bytes, axes: list[float], buttons: list[int], full_scale: float = 350.0) -> None:
    """Update Joy-like axes/buttons in place from one SpaceMouse HID report (3Dconnexion layout).

    Report 1 carries translation (newer models: translation then rotation, 12 bytes), report 2
    rotation, report 3 the button bitmask. The device's y and z point right and down; axes are
    turned into a right-handed x, y, z, roll, pitch, yaw as the spacenav driver publishes them,
    normalized to [-1, 1].
    """
    if not report:
        return
    rid, body = report[0], bytes(report[1:])
    sign = np.array([1.0, -1.0, -1.0])

    def triple(b: bytes) -> list[float]:
        return list(np.clip(np.frombuffer(b, "<i2").astype(float) / full_scale * sign, -1.0, 1.0))

    if rid == 1 and len(body) >= 6:
        axes[0:3] = triple(body[:6])
        if len(body) >= 12:
            axes[3:6] = triple(body[6:12])
    elif rid == 2 and len(body) >= 6:
        axes[3:6] = triple(body[:6])
    elif rid == 3 and body:
        mask = int.from_bytes(body[:4], "little")
        for i in range(len(buttons)):
            buttons[i] = (mask >> i) & 1
