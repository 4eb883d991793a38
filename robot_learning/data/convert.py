"""ROS 2 messages to dataset samples, by duck typing: the same code takes rclpy messages (the
recorder) and rosbags' deserialized messages (MCAP import), which share field names."""

from __future__ import annotations

import numpy as np

from robot_learning.data.schema import StreamSpec

IMAGE_ENCODINGS = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "mono8": (np.uint8, 1),
                   "16UC1": (np.uint16, 1), "mono16": (np.uint16, 1), "32FC1": (np.float32, 1),
                   "32FC3": (np.float32, 3)}


class BadSample(ValueError):
    """A message that cannot go into its stream; the message says why, ``reason`` is its category."""

    def __init__(self, message: str, reason: str = "bad_message"):
        super().__init__(message)
        self.reason = reason


def stamp_seconds(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _bytes(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1)
    return np.frombuffer(memoryview(data).cast("B") if not isinstance(data, bytes) else data, np.uint8)


def image_array(msg, spec: StreamSpec | None = None) -> np.ndarray:
    """Image content as an array, checking encoding, step and size against the stream's spec."""
    enc = msg.encoding
    if enc not in IMAGE_ENCODINGS:
        raise BadSample(f"encoding '{enc}' is not supported (supported: {', '.join(IMAGE_ENCODINGS)})",
                        "bad_encoding")
    if spec is not None and spec.encoding and enc != spec.encoding:
        raise BadSample(f"encoding '{enc}', expected '{spec.encoding}'", "bad_encoding")
    if spec is not None and spec.width and (msg.width, msg.height) != (spec.width, spec.height):
        raise BadSample(f"size {msg.width}x{msg.height}, expected {spec.width}x{spec.height}", "bad_size")
    dtype, ch = IMAGE_ENCODINGS[enc]
    row = msg.width * ch * np.dtype(dtype).itemsize
    buf = _bytes(msg.data)
    if msg.step < row or buf.size != msg.step * msg.height:
        raise BadSample(f"{msg.width}x{msg.height} {enc}: {buf.size} bytes with step {msg.step}, "
                        f"expected step >= {row} and {msg.step * msg.height} bytes", "bad_size")
    arr = buf.reshape(msg.height, msg.step)[:, :row].copy().view(dtype)
    if bool(msg.is_bigendian) != (np.dtype(dtype).byteorder == ">") and np.dtype(dtype).itemsize > 1:
        arr = arr.byteswap()
    arr = arr.reshape(msg.height, msg.width, ch)
    if enc == "bgr8":
        arr = arr[..., ::-1]
    return arr[..., 0] if ch == 1 else arr


def _vec(*xs) -> np.ndarray:
    return np.array([float(x) for x in xs], np.float64)


def has_header(spec: StreamSpec) -> bool:
    """Headerless messages (Float64, Bool, String) are states: stamped when received."""
    return spec.kind not in ("scalar", "flag", "text")


def to_sample(spec: StreamSpec, msg, t_recv: float) -> tuple[float, dict[str, np.ndarray]]:
    """(stamp, arrays) for one message. Messages without a header get their receive time."""
    kind = spec.kind
    if kind == "joint_state":
        n = len(msg.name) or len(msg.position)
        pos = np.asarray(msg.position, np.float64)
        vel = np.asarray(msg.velocity, np.float64) if len(msg.velocity) else np.full(n, np.nan)
        eff = np.asarray(msg.effort, np.float64) if len(msg.effort) else np.full(n, np.nan)
        if not (pos.size == vel.size == eff.size == n):
            raise BadSample(f"{n} joint names but {pos.size} positions, {vel.size} velocities, {eff.size} efforts",
                            "bad_shape")
        return stamp_seconds(msg.header), {"position": pos, "velocity": vel, "effort": eff}
    if kind == "image":
        return stamp_seconds(msg.header), {"data": image_array(msg, spec)}
    if kind == "pose":
        p, o = msg.pose.position, msg.pose.orientation
        return stamp_seconds(msg.header), {"data": _vec(p.x, p.y, p.z, o.x, o.y, o.z, o.w)}
    if kind == "vector6":
        a, b = (msg.twist.linear, msg.twist.angular) if hasattr(msg, "twist") else (msg.wrench.force,
                                                                                    msg.wrench.torque)
        return stamp_seconds(msg.header), {"data": _vec(a.x, a.y, a.z, b.x, b.y, b.z)}
    if kind == "scalar":
        return t_recv, {"data": _vec(msg.data)}
    if kind == "flag":
        return t_recv, {"data": np.array(bool(msg.data))}
    if kind == "text":
        return t_recv, {"data": np.array(str(msg.data))}
    raise BadSample(f"no converter for {spec.type}")


def stream_attrs(spec: StreamSpec, msg) -> dict:
    """What a stream's first message says about all of them: frame and joint names."""
    out = {}
    header = getattr(msg, "header", None)
    if header is not None:
        out["frame_id"] = str(header.frame_id)
    if spec.kind == "joint_state":
        out["names"] = [str(n) for n in msg.name]
    if spec.kind == "image":
        out["encoding"] = str(msg.encoding)
    return out
