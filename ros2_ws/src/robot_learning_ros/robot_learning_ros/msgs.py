"""numpy <-> standard ROS 2 messages, and the project's QoS profiles."""

from __future__ import annotations

import array
import importlib
import math
import struct

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TwistStamped, WrenchStamped
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image, JointState

from robot_learning.transforms import xyzw_to_wxyz

SENSOR_QOS = qos_profile_sensor_data  # BEST_EFFORT, depth 5
# Reliable with a deep history: a KEEP_LAST writer drops samples a busy reader has not yet
# acknowledged once its history is full. 100 samples (0.4 s of joint states at 250 Hz) lost a
# quarter of them to a recorder starved for seconds on a loaded host; 1000 hold 4 s. Small
# high-rate measurements (wrist F/T, tactile grids) are published with it too, as ros2_control's
# broadcasters publish reliably: best-effort, a recorder starved for a moment lost 75 of them in
# ten minutes that another subscriber received. Best-effort readers (the policy) still match.
STATE_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
# A node that acts on the newest state (the arm, the policy, the operator) reads with a short
# queue: after a stall it sees the present, not a second of the past replayed callback by
# callback (a policy server reading 1000-deep queues took 4x longer per inference).
LATEST_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
COMMAND_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)


def message_class(full_type: str):
    """The rclpy class of "pkg/msg/Name"."""
    pkg, _, name = full_type.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def to_sec_ns(t: float) -> tuple[int, int]:
    sec = math.floor(t)
    ns = round((t - sec) * 1e9)
    if ns >= 1_000_000_000:  # t a hair below a whole second rounds up to it
        sec, ns = sec + 1, ns - 1_000_000_000
    return sec, ns


def to_stamp(t: float) -> Time:
    sec, ns = to_sec_ns(t)
    return Time(sec=sec, nanosec=ns)


def _header(m, t: float, frame: str):
    """Stamp and frame set in place (no new Time object: these run at the control rate)."""
    m.header.stamp.sec, m.header.stamp.nanosec = to_sec_ns(t)
    m.header.frame_id = frame
    return m


def from_stamp(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def stamp_of_serialized(data: bytes) -> float:
    """The header stamp of a serialized stamped message (a raw subscription's), read without
    deserializing it: CDR puts a 4-byte encapsulation header first (its second byte 1 for
    little-endian), then the header's int32 sec and uint32 nanosec."""
    sec, nanosec = struct.unpack_from("<iI" if data[1] & 1 else ">iI", data, 4)
    return sec + nanosec * 1e-9


def pose_msg(pos: np.ndarray, quat_wxyz: np.ndarray, t: float, frame: str,
             reuse: PoseStamped | None = None) -> PoseStamped:
    """``reuse`` (here and in the other builders): refill that message instead of making one.
    A publisher at the control rate keeps one message per topic; rclpy serializes during
    ``publish``, so the same thread may refill it as soon as ``publish`` returns."""
    m = _header(reuse if reuse is not None else PoseStamped(), t, frame)
    # tolist(): plain floats in one call
    m.pose.position.x, m.pose.position.y, m.pose.position.z = np.asarray(pos, float).tolist()
    o = m.pose.orientation
    o.w, o.x, o.y, o.z = np.asarray(quat_wxyz, float).tolist()
    return m


def pose_from_msg(m: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    p, o = m.pose.position, m.pose.orientation
    return np.array([p.x, p.y, p.z]), xyzw_to_wxyz(np.array([o.x, o.y, o.z, o.w]))


def twist_from_msg(m: TwistStamped) -> np.ndarray:
    lin, ang = m.twist.linear, m.twist.angular
    return np.array([lin.x, lin.y, lin.z, ang.x, ang.y, ang.z])


def _stamped_pair(m, first, second, v, t: float, frame: str):
    """Fill a stamped message made of two 3-vectors (twist: linear/angular, wrench: force/torque)."""
    _header(m, t, frame)
    first.x, first.y, first.z, second.x, second.y, second.z = np.asarray(v[:6], float).tolist()
    return m


def twist_msg(v: np.ndarray, t: float, frame: str) -> TwistStamped:
    m = TwistStamped()
    return _stamped_pair(m, m.twist.linear, m.twist.angular, v, t, frame)


def wrench_msg(w: np.ndarray, t: float, frame: str, reuse: WrenchStamped | None = None) -> WrenchStamped:
    m = reuse if reuse is not None else WrenchStamped()
    return _stamped_pair(m, m.wrench.force, m.wrench.torque, w, t, frame)


def joint_state_msg(names: list[str], q, qd, effort, t: float, reuse: JointState | None = None) -> JointState:
    m = _header(reuse if reuse is not None else JointState(), t, "")
    if m.name != names:
        m.name = list(names)
    m.position = np.asarray(q, float).tolist()
    m.velocity = np.asarray(qd, float).tolist()
    m.effort = np.asarray(effort, float).tolist()
    return m


_ENCODINGS = {"rgb8": (np.uint8, 3), "16UC1": (np.uint16, 1), "32FC3": (np.float32, 3), "mono8": (np.uint8, 1),
              "32FC1": (np.float32, 1)}


def image_msg(arr: np.ndarray, encoding: str, t: float, frame: str, reuse: Image | None = None) -> Image:
    """An Image holding ``arr`` (any strides: a flipped view is copied upright in the same pass).

    With ``reuse``, that message is refilled in place: its data buffer is kept when the size
    matches, so a camera's frames cost one copy each and no allocation (rclpy serializes during
    ``publish``, so a message may be refilled as soon as ``publish`` returns)."""
    dtype, ch = _ENCODINGS[encoding]
    m = _header(reuse if reuse is not None else Image(), t, frame)
    m.height, m.width = int(arr.shape[0]), int(arr.shape[1])
    m.encoding = encoding
    m.is_bigendian = 0
    m.step = m.width * ch * np.dtype(dtype).itemsize
    shape = (m.height, m.width, ch) if ch > 1 else (m.height, m.width)
    if len(m.data) != m.step * m.height:
        m.data = array.array("B", bytes(m.step * m.height))
    np.frombuffer(m.data, dtype=dtype).reshape(shape)[...] = arr
    return m


def image_from_msg(m: Image) -> np.ndarray:
    """Image message to an array; a clear error for encodings or sizes that do not add up."""
    if m.encoding not in _ENCODINGS:
        raise ValueError(f"unsupported image encoding '{m.encoding}' (supported: {', '.join(_ENCODINGS)})")
    dtype, ch = _ENCODINGS[m.encoding]
    expected = m.height * m.width * ch * np.dtype(dtype).itemsize
    buf = np.frombuffer(bytes(m.data), dtype=np.uint8)
    if buf.size != expected or m.step != m.width * ch * np.dtype(dtype).itemsize:
        raise ValueError(f"image {m.width}x{m.height} {m.encoding}: {buf.size} bytes, step {m.step}, "
                         f"expected {expected} bytes")
    arr = buf.view(dtype).reshape(m.height, m.width, ch)
    return arr[..., 0] if ch == 1 else arr


def camera_info_msg(width: int, height: int, fovy_deg: float, t: float, frame: str) -> CameraInfo:
    """Pinhole intrinsics of a square-pixel camera with the given vertical field of view."""
    f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    m = CameraInfo()
    m.header.stamp = to_stamp(t)
    m.header.frame_id = frame
    m.width, m.height = width, height
    m.distortion_model = "plumb_bob"
    m.d = [0.0] * 5
    m.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    m.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    m.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return m
