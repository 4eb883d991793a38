"""The dataset schema (versioned) and the recipe that says what a recorder subscribes to.

Layout of one store (all plain zarr v3; see docs/dataset_format.md)::

    <name>.zarr/                       attrs: schema, schema_version, created, name
      episodes/<000012>/               attrs: status, task, operator, success, start/end, interventions, ...
        streams/<stream>/t             float64 [N] header stamp (s), NaN past what was flushed
        streams/<stream>/t_recv        float64 [N] when the recorder received it (s)
        streams/<stream>/<array>       [N, ...] the message's content (position, data, ...)
        steps/t, steps/action, steps/source, steps/intervention, steps/reward, steps/done
        steps/obs/<stream>.<array>     control-rate observations, sample-and-hold aligned by stamp
        steps/index/<stream>           int64 [T] row of the stream's newest sample at each step (-1: none yet)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from robot_learning.config import ConfigError, load_yaml

SCHEMA = "robot_learning.dataset"
SCHEMA_VERSION = 1
SOURCES = ("policy", "teleop", "hold")  # steps/source codes index this tuple
STEP_KEYS = ("t", "action", "source", "intervention", "reward", "done")  # arrays every step table has

# message type -> how its content is stored; the names are ROS 2's full type names
MESSAGE_KINDS = {
    "sensor_msgs/msg/JointState": "joint_state",
    "sensor_msgs/msg/Image": "image",
    "geometry_msgs/msg/PoseStamped": "pose",
    "geometry_msgs/msg/TwistStamped": "vector6",
    "geometry_msgs/msg/WrenchStamped": "vector6",
    "std_msgs/msg/Float64": "scalar",
    "std_msgs/msg/Bool": "flag",
    "std_msgs/msg/String": "text",
}
# kind -> the arrays a stream of that kind stores besides t and t_recv (see convert.to_sample)
STREAM_ARRAYS = {"joint_state": ("position", "velocity", "effort")}  # every other kind: ("data",)
# kind -> values per sample of its "data", where the message type fixes it
KIND_WIDTH = {"pose": 7, "vector6": 6, "scalar": 1, "flag": 1}


@dataclass
class StreamSpec:
    """One recorded topic: what it is called in the store and what is expected of it."""

    name: str
    topic: str
    type: str
    encoding: str | None = None     # images: the only encoding accepted
    width: int | None = None        # images: the only size accepted (else the first frame's)
    height: int | None = None
    sensor: bool = False            # subscribe BEST_EFFORT (sensor data QoS)
    required: bool = True           # warn when nothing arrived by the end of an episode
    continuous: bool = True         # publishes all the time (warn when silent at episode start)

    @property
    def kind(self) -> str:
        return MESSAGE_KINDS[self.type]


@dataclass
class ActionPart:
    """A piece of the executed action: a stream's array held from its newest sample."""

    array: str                      # "<stream>.<array>"
    default: list[float]
    hold_timeout: float | None = None  # older than this: the default (the arm's watchdog held)


@dataclass
class StepSpec:
    rate: float
    observations: list[str]         # "<stream>.<array>" copied at control rate
    action: list[ActionPart]
    source: str | None = None       # "<stream>.<array>" of String samples (policy/teleop/hold)
    intervention: str | None = None  # "<stream>.<array>" of Bool samples


@dataclass
class Recipe:
    name: str
    streams: dict[str, StreamSpec]
    steps: StepSpec
    min_steps: int = 5              # an interrupted episode shorter than this is dropped by repair
    source: str = ""
    raw: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return self.raw


def _ref(text: str, streams: dict, where: str) -> str:
    stream, _, array = text.partition(".")
    if stream not in streams or not array:
        raise ConfigError(f"{where}: '{text}' must be <stream>.<array> with a stream from 'streams'")
    return text


def parse_recipe(raw: dict, source: str = "<dict>") -> Recipe:
    try:
        streams = {}
        for name, s in raw["streams"].items():
            full = s["type"] if "/" in s["type"] else _full_type(s["type"])
            if full not in MESSAGE_KINDS:
                raise ConfigError(f"{source}: stream '{name}': message type '{s['type']}' is not supported "
                                  f"(supported: {', '.join(MESSAGE_KINDS)})")
            streams[name] = StreamSpec(name=name, topic=s["topic"], type=full, encoding=s.get("encoding"),
                                       width=s.get("width"), height=s.get("height"),
                                       sensor=bool(s.get("sensor", full == "sensor_msgs/msg/Image")),
                                       required=bool(s.get("required", True)),
                                       continuous=bool(s.get("continuous", True)))
        st = raw["steps"]
        steps = StepSpec(
            rate=float(st["rate"]),
            observations=[_ref(o, streams, f"{source}: steps.observations") for o in st.get("observations", [])],
            action=[_action_part(a, streams, source) for a in st["action"]],
            source=_ref(st["source"], streams, f"{source}: steps.source") if st.get("source") else None,
            intervention=(_ref(st["intervention"], streams, f"{source}: steps.intervention")
                          if st.get("intervention") else None),
        )
    except KeyError as e:
        raise ConfigError(f"{source}: missing key {e}") from e
    return Recipe(name=str(raw.get("name", Path(source).stem)), streams=streams, steps=steps,
                  min_steps=int(raw.get("min_steps", 5)), source=source, raw=raw)


def _action_part(a: dict, streams: dict, source: str) -> ActionPart:
    """An action part whose default has as many values as its array has per sample, where the
    message type says how many (a mismatch only showed when an episode was finished)."""
    ref = _ref(a["array"], streams, f"{source}: steps.action")
    width = KIND_WIDTH.get(streams[ref.split(".", 1)[0]].kind) if ref.endswith(".data") else None
    default = [float(v) for v in a.get("default", [0.0] * (width or 1))]
    if width is not None and len(default) != width:
        raise ConfigError(f"{source}: steps.action '{ref}' has {width} values per sample but its default "
                          f"has {len(default)}: give a default of {width} values (or none, for zeros)")
    return ActionPart(ref, default, a.get("hold_timeout"))


def _full_type(short: str) -> str:
    for full in MESSAGE_KINDS:
        if full.rsplit("/", 1)[-1] == short:
            return full
    return short


def load_recipe(path: str | Path) -> Recipe:
    return parse_recipe(load_yaml(path), str(path))
