"""rosbag2 MCAP in and out, without ROS: export episodes as standard messages, import a bag
recorded on a robot into a dataset. The recipe's streams map topics to dataset keys both ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from robot_learning.data.convert import IMAGE_ENCODINGS, BadSample, has_header
from robot_learning.data.schema import Recipe, StreamSpec, load_recipe, parse_recipe
from robot_learning.data.store import Dataset, DatasetError, DatasetWriter


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED if hasattr(Stores, "ROS2_KILTED") else Stores.ROS2_JAZZY)


def _header(ts, t: float, frame: str):
    T = ts.types
    sec = int(np.floor(t))
    stamp = T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)
    return T["std_msgs/msg/Header"](stamp=stamp, frame_id=frame)


def to_message(ts, spec: StreamSpec, t: float, row: dict[str, np.ndarray], meta: dict):
    """A rosbags message of the stream's type from one stored row (the inverse of ``to_sample``)."""
    T = ts.types
    kind, frame = spec.kind, meta.get("frame_id", "")
    if kind == "joint_state":
        names = list(meta.get("names") or [f"joint{i}" for i in range(row["position"].size)])
        return T[spec.type](header=_header(ts, t, frame), name=names, position=row["position"].astype(float),
                            velocity=row["velocity"].astype(float), effort=row["effort"].astype(float))
    if kind == "image":
        data = row["data"]
        enc = spec.encoding or {np.dtype(np.uint8): "rgb8" if data.ndim == 3 else "mono8",
                                np.dtype(np.uint16): "16UC1"}.get(data.dtype, "32FC3" if data.ndim == 3 else "32FC1")
        dtype, ch = IMAGE_ENCODINGS[enc]
        arr = np.ascontiguousarray(data, dtype=dtype)
        if enc == "bgr8":
            arr = np.ascontiguousarray(arr[..., ::-1])
        h, w = arr.shape[:2]
        return T[spec.type](header=_header(ts, t, frame), height=h, width=w, encoding=enc, is_bigendian=0,
                            step=w * ch * arr.itemsize, data=arr.view(np.uint8).reshape(-1))
    if kind == "pose":
        d = row["data"]
        P = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=d[0], y=d[1], z=d[2]),
                                        orientation=T["geometry_msgs/msg/Quaternion"](x=d[3], y=d[4], z=d[5], w=d[6]))
        return T[spec.type](header=_header(ts, t, frame), pose=P)
    if kind == "vector6":
        d = row["data"].astype(float)
        V = T["geometry_msgs/msg/Vector3"]
        a, b = V(x=d[0], y=d[1], z=d[2]), V(x=d[3], y=d[4], z=d[5])
        if spec.type.endswith("TwistStamped"):
            return T[spec.type](header=_header(ts, t, frame), twist=T["geometry_msgs/msg/Twist"](linear=a, angular=b))
        return T[spec.type](header=_header(ts, t, frame), wrench=T["geometry_msgs/msg/Wrench"](force=a, torque=b))
    if kind == "scalar":
        return T[spec.type](data=float(np.ravel(row["data"])[0]))
    if kind == "flag":
        return T[spec.type](data=bool(row["data"]))
    return T[spec.type](data=str(row["data"]))


def export_mcap(dataset: str | Path, out: str | Path, episodes: list[int] | None = None,
                progress: bool = True) -> list[Path]:
    """One rosbag2 (MCAP storage) directory per episode, messages at their recorded stamps."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ds = Dataset(dataset)
    ts = _typestore()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for idx in episodes if episodes is not None else ds.indices:
        ep = ds.episode(idx)
        recipe = parse_recipe(ep.meta["recipe"], f"episode {idx}")
        bag = out / f"episode_{idx:06d}"
        if bag.exists():
            raise DatasetError(f"{bag} exists: remove it or export elsewhere")
        rows = []  # (t_ns, connection key, stream, row index)
        data, attrs = {}, {}
        for name, spec in recipe.streams.items():
            s = ep.stream(name)
            if not s or len(s["t"]) == 0:
                continue
            data[name] = s
            attrs[name] = dict(ep.streams[name].attrs)
            t_pub = s["t"] if has_header(spec) else s["t_recv"]
            rows += [(int(round(tt * 1e9)), name, i) for i, tt in enumerate(t_pub)]
        rows.sort()
        with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
            conns = {n: w.add_connection(recipe.streams[n].topic, recipe.streams[n].type, typestore=ts)
                     for n in data}
            for t_ns, name, i in tqdm(rows, desc=f"episode {idx} -> MCAP", unit="msg", disable=not progress,
                                      leave=False):
                spec = recipe.streams[name]
                row = {k: v[i] for k, v in data[name].items() if k not in ("t", "t_recv")}
                msg = to_message(ts, spec, float(data[name]["t"][i]), row, attrs[name])
                w.write(conns[name], t_ns, ts.serialize_cdr(msg, spec.type))
        written.append(bag)
    return written


def import_mcap(bags: list[str | Path], dataset: str | Path, recipe: Recipe | str, task: str = "",
                success: bool | None = None, operator: str = "", progress: bool = True) -> list[int]:
    """Each bag (rosbag2 directory or .mcap file) becomes one episode of ``dataset``."""
    from rosbags.highlevel import AnyReader

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    by_topic = {s.topic: s for s in recipe.streams.values()}
    writer = DatasetWriter(dataset, recipe)
    made = []
    try:
        for bag in bags:
            bag = Path(bag)
            if not bag.exists():
                raise DatasetError(f"bag not found: {bag}")
            with AnyReader([bag], default_typestore=_typestore()) as reader:
                conns = [c for c in reader.connections if c.topic in by_topic]
                missing = sorted(set(by_topic) - {c.topic for c in reader.connections})
                if not conns:
                    raise DatasetError(f"{bag} has none of the recipe's topics ({', '.join(sorted(by_topic))})")
                for c in conns:
                    if c.msgtype != by_topic[c.topic].type:
                        raise DatasetError(f"{bag}: {c.topic} is {c.msgtype}, the recipe says {by_topic[c.topic].type}")
                ep = writer.start_episode({"task": task, "operator": operator, "source_bag": str(bag.resolve()),
                                           "missing_topics": missing})
                total = sum(c.msgcount for c in conns)
                for conn, t_ns, raw in tqdm(reader.messages(connections=conns), total=total, unit="msg",
                                            desc=f"import {bag.name}", disable=not progress, leave=False):
                    spec = by_topic[conn.topic]
                    msg = reader.deserialize(raw, conn.msgtype)
                    try:
                        ep.add_message(spec.name, msg, t_ns * 1e-9)
                    except BadSample:
                        pass  # counted per stream and reason in the episode's metadata
                    if ep.streams[spec.name].buf and len(ep.streams[spec.name].buf) >= 256:
                        ep.flush()
                ep.finish(success)
                made.append(ep.index)
    finally:
        writer.close()
    return made
