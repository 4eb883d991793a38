"""recorder: writes the topics of a dataset recipe into a crash-safe zarr dataset, episode by episode.

Services (std_srvs): /recorder/start_episode (Trigger), /recorder/stop_episode (SetBool: data is
the success label), /recorder/discard_episode (Trigger). /recorder/episode_meta (String, JSON)
adds fields to the next episode's metadata (task, operator, seed...). /recorder/status
(String, JSON, latched) says whether it records, how many episodes it wrote and the metadata
the next episode will get (``next_meta``: wait for yours there before starting an episode; the
topic and the service are separate channels, and on a busy machine the service can win).
/diagnostics (1 Hz, status "recorder"): the writer's backlog (messages taken but not yet
written, their MiB and how many seconds the writer is behind; WARN while it grows or while
camera frames are shed past ``max_backlog_mb``) and each stream's messages in the current
episode.
"""

from __future__ import annotations

import json
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from robot_learning.config import load_yaml
from robot_learning.data.recorder import MAX_BACKLOG_BYTES, MAX_BEHIND_S, Recorder
from robot_learning.data.schema import StreamSpec, load_recipe
from robot_learning.data.store import DatasetError
from robot_learning.heap import heap_stats
from robot_learning.paths import resolve
from robot_learning_ros.msgs import LATCHED_QOS, message_class
from robot_learning_ros.runtime import BackgroundSpin, init_ros, lenient_params, spin_main

# The writer falls a second or two behind at times (an episode's first chunks, a slow fsync) and
# catches up; a backlog that grew at each of this many reports in a row is one it does not.
BACKLOG_GROWING = 5

# How long the recorder's shared-memory port may go unread (its process starved of CPU, or
# stopped) before writers take it for dead and drop what is queued in it. Fast DDS's default,
# 1 s, lost every reliable message from the start of a 3 s stall; writers notice after one to
# two times this. Only the recorder gets it: a port opened within this window blocks the
# opener for a third of it, and all nodes with 10 s slowed discovery enough to fail graph tests.
RECORDER_SHM_HEALTHY_CHECK_MS = 4000

# Deep queues: the recorder must not drop what arrives in bursts while it writes. A stream is
# recorded reliably whenever every publisher offers it (as rosbag2 adapts its QoS): a best-effort
# reader loses whatever arrives while its taking thread is starved, a reliable one has it resent.
# A queue's depth is how long the taking thread may stall before the stream loses messages: a
# one-hour soak had one stall of ~7.6 s that cost the 250 Hz streams 3.6 s (1000 deep: 4 s)
# and the 125 Hz ones nothing. Small messages get 5000 (20 s at 250 Hz; a test reader stalled
# 12 s kept all 5000, at 1000 it lost 1837): the memory is only taken while a backlog lasts
# (release_reader_memory). Camera frames keep shallower queues: a deep queue of frames is GBs.
SMALL_DEPTH = 5000
FRAME_DEPTH = {ReliabilityPolicy.RELIABLE: 1000, ReliabilityPolicy.BEST_EFFORT: 100}
SMALL_IMAGE = 64 * 64  # pixels: a tactile grid is an Image too, of a few taxels

# The first episode waits at most this long for every required stream to have a matched
# publisher: an episode started 0.25 s after the recorder came up once lacked its first 0.6 s of
# arm commands (discovery had not matched the command topic yet) while the arm moved 0.25 rad.
FIRST_MATCH_S = 3.0


def record_qos(spec: StreamSpec, reliable: bool) -> QoSProfile:
    """The QoS the recorder subscribes ``spec`` with, reliable or best-effort."""
    reliability = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
    frames = spec.kind == "image" and not (spec.width and spec.height and spec.width * spec.height <= SMALL_IMAGE)
    return QoSProfile(depth=FRAME_DEPTH[reliability] if frames else SMALL_DEPTH, reliability=reliability,
                      history=HistoryPolicy.KEEP_LAST)


class RecorderNode(Node):
    def __init__(self):
        super().__init__("recorder")
        p = lenient_params(self)
        recipe = load_recipe(p("recipe", "datasets/recipes/workcell.yaml").value)
        path = p("dataset", "").value or f"datasets/{recipe.name}.zarr"
        self.base_meta = {"task": p("task", "").value, "operator": p("operator", "").value}
        for key in ("robot", "calibration"):
            f = p(key, {"robot": "hardware/robots/panda.yaml", "calibration": "calibration/workcell.yaml"}[key]).value
            if f:
                self.base_meta[key] = load_yaml(f)
        self.next_meta: dict = {}
        self._first_start = True
        self.rec = Recorder(resolve(path), recipe, log=self._log, flush_interval=float(p("flush_interval", 0.5).value),
                            max_backlog_bytes=int(float(p("max_backlog_mb", MAX_BACKLOG_BYTES >> 20).value) * 2**20),
                            max_behind_s=float(p("max_behind_s", MAX_BEHIND_S).value))
        self.pub_status = self.create_publisher(String, "/recorder/status", LATCHED_QOS)
        self.subs: dict[str, tuple[object, ReliabilityPolicy]] = {}  # stream -> (subscription, its reliability)
        for name, spec in recipe.streams.items():
            if not spec.sensor:
                self._subscribe(name, record_qos(spec, reliable=True))
        self._match_sensor_streams()
        self.create_timer(0.5, self._match_sensor_streams)
        self.create_subscription(String, "/recorder/episode_meta", self._on_meta, LATCHED_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.backlogs: list[int] = []
        self.create_timer(1.0, self._diagnostics)
        # finishing an episode waits for its last chunk to reach the disk (seconds on a busy
        # machine): the services live on a companion node spun by its own thread, so messages
        # keep being taken meanwhile instead of overflowing the subscriptions' queues (rclpy's
        # multi-threaded executor would do the same at several times the CPU)
        self.service_node = Node("recorder_services")
        self.service_node.create_service(Trigger, "/recorder/start_episode", self._on_start)
        self.service_node.create_service(SetBool, "/recorder/stop_episode", self._on_stop)
        self.service_node.create_service(Trigger, "/recorder/discard_episode", self._on_discard)
        self.service_spin = BackgroundSpin(self.service_node)
        self._status()
        self.get_logger().info(f"recording '{recipe.name}' ({len(recipe.streams)} streams) into {resolve(path)}")

    def _subscribe(self, name: str, qos: QoSProfile) -> None:
        spec = self.rec.recipe.streams[name]
        old = self.subs.pop(name, None)
        if old is not None:
            self.destroy_subscription(old[0])
        sub = self.create_subscription(message_class(spec.type), spec.topic,
                                       lambda m, n=name: self.rec.on_message(n, m, self._now()), qos)
        self.subs[name] = (sub, qos.reliability)

    def _match_sensor_streams(self) -> None:
        """Subscribe each sensor stream as reliably as all of its publishers allow.

        A reliable reader does not match a best-effort writer, so a sensor stream waits for its
        first publisher; one that later appears best-effort turns the subscription best-effort
        (and says so) rather than going unrecorded.
        """
        for name, spec in self.rec.recipe.streams.items():
            if not spec.sensor:
                continue
            pubs = self.get_publishers_info_by_topic(spec.topic)
            if not pubs:
                continue
            reliable = all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in pubs)
            want = record_qos(spec, reliable)
            have = self.subs.get(name)
            if have is None:
                self._subscribe(name, want)
            elif have[1] == ReliabilityPolicy.RELIABLE and not reliable:
                self.get_logger().warning(f"{spec.topic}: a best-effort publisher appeared; recording it "
                                          "best-effort from now on (messages may be lost under load)")
                self._subscribe(name, want)

    def _log(self, level: str, msg: str) -> None:
        """The recorder's messages at their level, each level from a line of its own: rclpy keys
        a logging call by where it is made and raises if one place logs at two severities (a
        soak's recorder died so, shedding frames with a warning where it had logged info)."""
        logger = self.get_logger()
        if level == "warn":
            logger.warning(msg)
        elif level == "error":
            logger.error(msg)
        else:
            logger.info(msg)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _status(self) -> None:
        ep = self.rec.episode
        self._said_recording = ep is not None
        self.pub_status.publish(String(data=json.dumps(
            {"recording": ep is not None, "episode": ep.index if ep else None, "finished": self.rec.finished,
             "error": self.rec.error, "next_meta": self.next_meta})))

    def _diagnostics(self) -> None:
        s = self.rec.stats()
        if s["recording"] != self._said_recording:  # an episode finished outside a service call
            self._status()                           # (a stop that timed out while the writer caught up)
        self.backlogs = (self.backlogs + [s["backlog"]])[-BACKLOG_GROWING - 1:]
        growing = len(self.backlogs) > BACKLOG_GROWING and all(
            a < b for a, b in zip(self.backlogs, self.backlogs[1:]))
        st = DiagnosticStatus(name="recorder", hardware_id=str(self.rec.writer.path), level=DiagnosticStatus.OK,
                              message=f"recording episode {s['episode']}" if s["recording"] else "idle")
        if s["error"]:
            st.level, st.message = DiagnosticStatus.ERROR, f"stopped: {s['error']}"
        elif s["shed"]:
            st.level, st.message = DiagnosticStatus.WARN, (
                f"camera frames shed this episode ({sum(s['shed'].values())}): the writer is {s['behind_s']} s behind "
                f"with {s['backlog_mib']} MiB queued (record fewer or smaller camera streams, or free a core)")
        elif growing:
            st.level, st.message = DiagnosticStatus.WARN, (
                f"{s['backlog']} messages waiting to be written, more every second: this machine is not "
                "keeping up (record fewer or smaller streams, or a faster disk)")
        values = {k: s[k] for k in ("recording", "backlog", "backlog_max", "backlog_mib", "backlog_mib_max",
                                    "behind_s", "finished")}
        values |= {f"received/{n}": v for n, v in sorted(s["received"].items())}
        values |= {f"shed/{n}": v for n, v in sorted(s["shed"].items())}
        values |= {f"heap_mib/{k}": round(v, 1) for k, v in heap_stats().items()}
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def _on_meta(self, m: String) -> None:
        try:
            self.next_meta = dict(json.loads(m.data))
        except (ValueError, TypeError) as e:
            self.get_logger().warning(f"ignored /recorder/episode_meta: not a JSON object ({e})")
            return
        self._status()  # says which metadata the next episode gets: a client waits for it before starting one

    def _unmatched(self) -> list[str]:
        """Required streams no publisher is matched to yet (a sensor stream is subscribed only
        once a publisher shows, by the main thread's timer)."""
        out = []
        for name, spec in self.rec.recipe.streams.items():
            sub = self.subs.get(name)
            if spec.required and (sub is None or sub[0].get_publisher_count() == 0):
                out.append(name)
        return out

    def _await_discovery(self) -> None:
        """Before the first episode: give discovery up to FIRST_MATCH_S to match every required
        stream, so that the episode does not start before its commands can be recorded (a
        stream that has no publisher at all, a camera not started, costs this wait once)."""
        t0 = time.monotonic()
        while (waiting := self._unmatched()) and time.monotonic() - t0 < FIRST_MATCH_S:
            time.sleep(0.05)
        if time.monotonic() - t0 > 0.1:
            self.get_logger().info(f"first episode: waited {time.monotonic() - t0:.1f} s for publishers"
                                   + (f"; still none on {', '.join(waiting)}" if waiting else ""))

    def _on_start(self, req, res):
        if self._first_start:
            self._first_start = False
            self._await_discovery()
        silent = self.rec.silent_streams()
        if silent:
            topics = ", ".join(self.rec.recipe.streams[n].topic for n in silent)
            self.get_logger().warning(f"no messages in the last 2 s on {topics}: those streams may stay empty "
                                      "(is their driver running?)")
        try:
            idx = self.rec.start({**self.base_meta, **self.next_meta, "t_start_clock": self._now()})
            res.success, res.message = True, json.dumps({"episode": idx})
            self.get_logger().info(f"episode {idx} recording")
        except DatasetError as e:
            res.success, res.message = False, str(e)
            self.get_logger().error(str(e))
        self._status()
        return res

    def _finish(self, res, **kw):
        try:
            meta = self.rec.stop(t_end=self._now(), **kw)
            res.success = True
            res.message = json.dumps({k: meta.get(k) for k in ("index", "n_steps", "duration", "success",
                                                               "missing_streams", "shed", "discarded") if k in meta})
            if meta.get("missing_streams"):
                self.get_logger().warning(f"episode {meta.get('index')} has no data from {meta['missing_streams']}")
            for name, n in (meta.get("shed") or {}).items():
                self.get_logger().warning(f"episode {meta.get('index')}: {n} frame(s) of "
                                          f"{self.rec.recipe.streams[name].topic} shed while the writer was behind")
            for name, g in (meta.get("gaps") or {}).items():
                self.get_logger().warning(
                    f"episode {meta.get('index')}: {self.rec.recipe.streams[name].topic} has {g['gaps']} gap(s) in its "
                    f"{g['rate_hz']:g} Hz stream, about {g['missing']} message(s) missing (longest {g['longest_s']} s)")
            self.get_logger().info(f"episode {'discarded' if kw.get('discard') else 'saved'}: {res.message}")
        except DatasetError as e:
            res.success, res.message = False, str(e)
            self.get_logger().error(str(e))
        self.next_meta = {}
        self._status()
        return res

    def _on_stop(self, req, res):
        return self._finish(res, success=bool(req.data))

    def _on_discard(self, req, res):
        return self._finish(res, success=None, discard=True)


def main(args=None) -> None:
    init_ros(args=args, shm_healthy_check_ms=RECORDER_SHM_HEALTHY_CHECK_MS, release_reader_memory=True)
    try:
        node = RecorderNode()
    except (DatasetError, ValueError) as e:
        print(f"recorder: {e}", flush=True)
        raise SystemExit(2) from None

    def shutdown() -> None:
        if node.rec.recording:
            node.get_logger().warning("shutting down while recording: the episode is saved unlabelled")
            try:
                node.rec.stop(success=None, t_end=node._now())
            except DatasetError as e:
                node.get_logger().error(f"{e}; the flushed part is recovered on the next open")
        node.rec.close()
        node.service_spin.close()

    spin_main(node, shutdown)


if __name__ == "__main__":
    main()
