"""rl_graph_actor: on-robot RL through the ROS graph, the operator able to take over at any moment.

The actor runs the learner's newest policy on what the graph observes (the recipe's topics: the
same arrays the recorder stores and the learner's demonstrations hold) and commands the arm
where a policy server does, on ``/policy/command/twist`` and ``/policy/command/gripper``: the
command mux passes them on unless the operator is engaged (a teleop device, or the scripted
``intervening_operator`` in the sim). Each step lasts ``1 / step_rate`` s of the graph's clock
(sim time in the sim). Its transition holds the action that reached the arm (the policy's, or
while the mux reports ``/intervention`` the operator's, averaged from what the mux sent) with
the intervention flag, and goes to the learner through ``learner_link.LearnerLink``.

Episodes (``episodes.EpisodeNode``): a reset, then steps until success (``reward_topic``: the
sim's ``/sim/task/success``, or ``/reward/success`` from ``reward_node``'s classifier, or the
operator's success button: ``stop_success`` on ``/teleop/event``), the operator's failure
button (the episode ends, not as a terminal state), the step limit, or a protective stop.
``reset:=sim`` calls ``/sim/reset``; ``reset:=home`` is the robot's: a joint trajectory to the
home pose through the mux, then the operator's go (``/rl/go``; ``auto_go:=true`` skips it);
``reset:=home_sim`` is the sim as hardware's.
``/rl/pause`` and ``/rl/resume`` hold the actor between steps (the mux and the arm hold the
arm); a paused or holding actor sends nothing.
``images:=front_color,wrist_color`` adds cameras to the observation (the recipe's colour
streams, shrunk to ``image_size`` as recorded frames are for training), for a policy from pixels.
``base:=CKPT`` makes the policy a residual on a frozen diffusion policy (``train residual-sac``
on the robot; ``rl.residual_env.ResidualOnRobot``): the base plans its chunks from the graph's
observations, the agent sees its action due now and corrects it by at most ``residual_scale``
of each action's range; the step rate is the base's. The learner's checkpoints then deploy as
``residual_sac`` policies. ``rlif:=true`` makes the reward RLIF's (``rl.rlif``): -1 on the policy's step a takeover
followed and at a protective stop, 0 otherwise. ``record:=true`` has the
recorder keep every episode, interventions included (``/intervention`` is in the recipe).
Each episode's return, length, success and intervention rate go to ``report_dir/episodes.jsonl``
and TensorBoard (``report_dir/tb``).

Evaluation (``eval_every:=N``, once the learner's weights have arrived): after every N
training episodes, ``eval_episodes`` episodes with the policy's mean action (no exploration;
the operator may still take over, and their transitions still go to the learner: robot time is
too dear to throw away). Their success and return go to ``episodes.jsonl`` as a row with
``eval_success``, to TensorBoard, and to ``report_dir/curves.png``; the first one of each is
a video (``report_dir/videos/step_<steps>.mp4``) from ``video_camera`` (its
``/<camera>/color/image_raw``, at the 5 frames per second the episode's snapshots keep).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import Trigger

from robot_learning.data.convert import BadSample, to_sample
from robot_learning.data.sampler import resize_frame
from robot_learning.data.schema import load_recipe
from robot_learning.paths import project_root, resolve
from robot_learning.rl.learner import spec_json, transition_arrays
from robot_learning.rl.replay import ObsSpec
from robot_learning.rl.residual_env import BASE_ACTION, ResidualOnRobot
from robot_learning.rl.rlif import RlifRewards
from robot_learning.sim.tasks import make_task
from robot_learning_ros.episodes import EpisodeNode
from robot_learning_ros.learner_link import LearnerLink
from robot_learning_ros.msgs import (
    COMMAND_QOS,
    LATCHED_QOS,
    LATEST_QOS,
    SENSOR_QOS,
    message_class,
    pose_from_msg,
    twist_from_msg,
    twist_msg,
)
from robot_learning_ros.runtime import lenient_params, run_until_stopped


class GraphActor(EpisodeNode):
    operator = "rl_policy"
    default_episodes = 0  # until stopped
    go_service = "/rl/go"

    def __init__(self):
        super().__init__("rl_graph_actor")
        p = lenient_params(self)
        from robot_learning.train.sac import WORKCELL_OBS

        obs = str(p("obs", "").value)
        self.keys = [k.strip() for k in obs.split(",") if k.strip()] or WORKCELL_OBS.get(self.task) or [
            "ee_pose.data", "gripper_state.position"]
        recipe = str(p("recipe", str(project_root() / "datasets/recipes/workcell.yaml")).value)
        self.recipe = load_recipe(resolve(recipe))
        for k in self.keys:
            if k.split(".", 1)[0] not in self.recipe.streams:
                raise ValueError(f"obs key '{k}' is not a stream of {recipe} "
                                 f"({', '.join(sorted(self.recipe.streams))})")
        self.images = [c.strip() for c in str(p("images", "").value).split(",") if c.strip()]
        cameras = [n for n, s in self.recipe.streams.items() if s.kind == "image" and s.encoding == "rgb8"]
        for cam in self.images:
            if cam not in cameras:
                raise ValueError(f"images: '{cam}' is not a colour stream of {recipe} ({', '.join(cameras)})")
        size = int(p("image_size", 64).value)
        self.image_size = (size, size)
        self.base_frame = self.robot.base_frame
        self.step_hz = float(p("step_rate", 10.0).value)
        base = str(p("base", "").value)
        self.residual = ResidualOnRobot(str(resolve(base)), float(p("residual_scale", 0.1).value),
                                        float(p("noise_scale", 1.0).value)) if base else None
        self.observed = list(self.keys)
        if self.residual is not None:
            if self.images:
                raise ValueError("a residual (base:=) sees the state only: leave images empty")
            if abs(self.step_hz * self.residual.dt - 1.0) > 1e-6:  # its chunks are timed in its own steps
                raise ValueError(f"the base {base} steps at {1.0 / self.residual.dt:g} Hz: set "
                                 f"step_rate:={1.0 / self.residual.dt:g} (the operator's clock takes it too)")
            self.observed = list(dict.fromkeys([*self.keys, *self.residual.keys]))
            for k in self.residual.keys:
                if k.split(".", 1)[0] not in self.recipe.streams:
                    raise ValueError(f"the base observes '{k}', which is not a stream of {recipe}")
        self.command_hz = float(p("command_rate", 50.0).value)
        # graph-clock s from one step's first command to the next's, the last few (step_seconds)
        self.step_lengths: deque[float] = deque(maxlen=20)
        self.step_began: float | None = None
        # the task's action space and shaping, as in the env (peg_insert: 10 cm/s, the gripper
        # closed, roll and pitch held, the hand in a box around the hole)
        self.task_model = make_task(self.task)
        self.max_steps = int(p("max_episode_steps", 0).value) or self.task_model.max_steps
        self.total_steps = int(p("max_steps", 0).value)  # 0: until stopped (or ``episodes`` run out)
        self.on_lost = str(p("on_learner_lost", "keep").value)
        if self.on_lost not in ("keep", "hold"):
            raise ValueError(f"on_learner_lost must be 'keep' or 'hold', not '{self.on_lost}'")
        self.rlif = bool(p("rlif", False).value)
        self.seed = int(p("seed", 0).value)
        self.eval_every = int(p("eval_every", 0).value)
        self.eval_episodes = int(p("eval_episodes", 3).value)
        if self.eval_every < 0 or self.eval_episodes < 1:
            raise ValueError(f"eval_every ({self.eval_every}) must be 0 (never) or more, and eval_episodes "
                             f"({self.eval_episodes}) at least 1")
        self.video_camera = str(p("video_camera", "front").value)
        if self.video_camera not in ("front", "wrist", ""):
            raise ValueError(f"video_camera '{self.video_camera}': the episodes keep snapshots of front and wrist "
                             "only (or '' for no video)")
        self.evaluating = False
        self.eval_rows: list[dict] = []
        import robot_learning.policies.sac  # noqa: F401  torch now, not in the middle of an episode
        # (importing it when the first weights arrive held the arm still for seconds)
        self.link = LearnerLink(self, str(p("outbox", "runs/actor_outbox").value),
                                float(p("learner_timeout", 3.0).value))
        # what the graph says, kept by the callbacks (under self.lock)
        self.latest: dict[str, tuple[float, dict[str, np.ndarray]]] = {}
        self.reward_success = False
        self.intervening = False
        self.seen_intervention = False
        self.mux_twists: list[np.ndarray] = []
        self.mux_grip: float | None = None
        self.tcp_quat: np.ndarray | None = None
        self.objects: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.paused = threading.Event()
        for b in self.task_model.object_bodies:
            self.create_subscription(PoseStamped, f"/sim/objects/{b}/pose",
                                     lambda m, b=b: self.objects.__setitem__(b, pose_from_msg(m)), LATEST_QOS)
        for stream in sorted({k.split(".", 1)[0] for k in self.observed} | set(self.images)):
            spec = self.recipe.streams[stream]
            self.create_subscription(message_class(spec.type), spec.topic,
                                     lambda m, n=stream, s=spec: self._on_obs(n, s, m),
                                     SENSOR_QOS if spec.sensor else LATEST_QOS)
        reward_topic = str(p("reward_topic", "/sim/task/success").value)
        self.create_subscription(Bool, reward_topic, self._on_reward, LATCHED_QOS)
        self.create_subscription(Bool, "/intervention", self._on_intervention, LATCHED_QOS)
        self.create_subscription(TwistStamped, "/arm/command/twist", self._on_mux_twist, COMMAND_QOS)
        self.create_subscription(Float64, "/gripper/command", self._on_mux_grip, COMMAND_QOS)
        self.pub_twist = self.create_publisher(TwistStamped, "/policy/command/twist", COMMAND_QOS)
        self.pub_grip = self.create_publisher(Float64, "/policy/command/gripper", COMMAND_QOS)
        self.pub_episode = self.create_publisher(String, "/rl/episode", LATCHED_QOS)
        self.create_service(Trigger, "/rl/pause", self._on_pause)
        self.create_service(Trigger, "/rl/resume", self._on_resume)
        self.rows = None
        self.steps_before, self.episodes_before = 0, 0  # a restarted actor's earlier runs in the same report
        if self.report_dir:
            self.report_dir.mkdir(parents=True, exist_ok=True)
            self.steps_before, self.episodes_before = self._earlier_runs(self.report_dir / "episodes.jsonl")
            self.rows = (self.report_dir / "episodes.jsonl").open("a")
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.report_dir / "tb"))   # as train sac names them, by robot steps

    @staticmethod
    def _earlier_runs(path) -> tuple[int, int]:
        """(robot steps, episodes) that earlier runs of this actor wrote to its report: a
        restarted actor's curves, TensorBoard steps and video names go on from there, and its
        episodes take new seeds."""
        from robot_learning.train.compare import read_rows

        rows = read_rows(path) if path.is_file() else []
        return (max((int(r.get("total_steps", 0)) for r in rows), default=0),
                max((int(r.get("episode", -1)) + 1 for r in rows), default=0))

    @property
    def robot_steps(self) -> int:
        """Steps on the robot over every run in this report (``steps``: this run's)."""
        return self.steps_before + self.steps

    # --- callbacks ---
    def _on_obs(self, name: str, spec, msg) -> None:
        try:
            t, arrays = to_sample(spec, msg, self.t_now)
        except BadSample as e:
            self.get_logger().warning(f"{spec.topic}: {e}", throttle_duration_sec=5.0)
            return
        if name in self.images:  # shrunk here, once per frame, as the training frames were
            arrays = {"data": resize_frame(arrays["data"], self.image_size)}
        with self.lock:
            self.latest[name] = (t, arrays)

    def _on_reward(self, m: Bool) -> None:
        self.reward_success = bool(m.data)

    def _on_intervention(self, m: Bool) -> None:
        with self.lock:
            self.intervening = bool(m.data)
            self.seen_intervention |= self.intervening

    def _on_mux_twist(self, m: TwistStamped) -> None:
        with self.lock:
            self.mux_twists.append(twist_from_msg(m))

    def _on_mux_grip(self, m: Float64) -> None:
        with self.lock:
            self.mux_grip = float(m.data)

    def _on_pause(self, req, res):
        self.paused.set()
        res.success, res.message = True, "paused: the actor holds between steps"
        return res

    def _on_resume(self, req, res):
        self.paused.clear()
        res.success, res.message = True, "running"
        return res

    def on_pose(self, t: float, pos: np.ndarray, quat: np.ndarray) -> None:
        with self.lock:
            self.tcp_quat = quat

    # --- observations and actions ---
    def shaped(self, a: np.ndarray) -> np.ndarray:
        """The policy's action as the task lets it through from the TCP pose now (``Task.shape_action``)."""
        low, high = self.bounds
        with self.lock:
            pos, quat, objects = self.tcp_now, self.tcp_quat, dict(self.objects)
        a = np.clip(a, low, high)
        if pos is None or quat is None:
            return a.astype(np.float32)
        self.task_model.locate(objects)
        return self.task_model.shape_action(a, pos, quat, self.step_seconds()).astype(np.float32)

    def step_seconds(self) -> float:
        """How long the next command will be in force: a step of the graph's clock, or longer as
        the recent steps were, since the arm goes on with a step's twist while the actor observes
        and chooses the next (longer on a busy machine). The task caps each velocity so that this
        long ends at the edge of its box: shaped for the nominal step, the hand left the box by
        1.5 cm in a busy test run."""
        return max([1.0 / self.step_hz, *self.step_lengths])

    def observe(self, newer_than: float = -np.inf, timeout: float = 10.0) -> dict[str, np.ndarray]:
        """The newest value of every observed key and camera, each stamped after ``newer_than``."""
        streams = {k.split(".", 1)[0] for k in self.observed} | set(self.images)
        end = time.monotonic() + timeout
        while True:
            with self.lock:
                if all(s in self.latest and self.latest[s][0] > newer_than for s in streams):
                    obs = {k: np.asarray(self.latest[k.split(".", 1)[0]][1][k.split(".", 1)[1]], np.float32).ravel()
                           for k in self.observed}
                    return obs | {c: self.latest[c][1]["data"] for c in self.images}
            if not self.running():
                raise KeyboardInterrupt  # asked to stop while waiting
            if time.monotonic() > end:
                missing = [self.recipe.streams[s].topic for s in streams if s not in self.latest]
                raise RuntimeError(f"no fresh observation within {timeout:.0f} s"
                                   + (f" (nothing yet on {', '.join(missing)})" if missing else ""))
            time.sleep(0.002)

    def apply(self, a: np.ndarray) -> tuple[np.ndarray, bool]:
        """Command ``a`` for one step of the graph's clock; (the action that reached the arm,
        whether the operator had it at any moment of the step)."""
        with self.lock:
            self.mux_twists, self.seen_intervention = [], self.intervening
        if self.step_began is not None and self.t_now - self.step_began < 1.0:  # (not across a pause)
            self.step_lengths.append(self.t_now - self.step_began)
        self.step_began = self.t_now
        end = self.t_now + 1.0 / self.step_hz
        deadline = time.monotonic() + 30.0
        while self.t_now < end and self.running():
            if time.monotonic() > deadline:
                raise RuntimeError("the graph's clock stopped: no /arm/ee_pose for 30 s (is the arm node up?)")
            self.pub_twist.publish(twist_msg(a[:6], self.t_now, self.base_frame))
            self.pub_grip.publish(Float64(data=float(a[6])))
            time.sleep(1.0 / self.command_hz)
        with self.lock:
            if not self.seen_intervention:
                return a, False
            twist = np.mean(self.mux_twists, axis=0) if self.mux_twists else np.zeros(6)
            grip = self.mux_grip if self.mux_grip is not None else float(a[6])
        low, high = self.bounds
        return np.clip(np.r_[twist, grip], low, high).astype(np.float32), True

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The arm's action space as the task narrows it: the env's action space too."""
        return self.task_model.action_bounds(*self.robot.limits.twist_action_bounds())

    def announce(self) -> ObsSpec:
        obs = self.observe(timeout=60.0)
        res = self.residual
        if res is not None:  # the agent: the state and the base's action, a correction in [-1, 1]
            keys = (*self.keys, BASE_ACTION)
            sizes = tuple(int(obs[k].size) for k in self.keys) + (len(res.bound),)
            spec = ObsSpec(keys, sizes)
            n = len(res.bound)
            self.link.announce(spec_json(spec, [-1.0] * n, [1.0] * n, 1.0 / self.step_hz,
                                         f"graph/{self.task}/residual", rlif=self.rlif,
                                         extra=res.spec_extra(self.keys)))
            return spec
        spec = ObsSpec(tuple(self.keys), tuple(int(obs[k].size) for k in self.keys), tuple(self.images),
                       (*self.image_size, 3))
        low, high = self.bounds
        self.link.announce(spec_json(spec, low.tolist(), high.tolist(), 1.0 / self.step_hz, f"graph/{self.task}",
                                     list(self.task_model.action_dims), self.rlif))
        return spec

    def choose(self, obs: dict[str, np.ndarray], rng, grip: float) -> tuple[np.ndarray, np.ndarray]:
        """(the agent's action, the arm's command): the learner's policy, uniform in the bounds
        before its first weights; with a base, the agent's correction ``u`` (none before the
        first weights: the base alone) and the corrected action as a command."""
        policy, res = self.link.policy, self.residual
        mean = self.evaluating  # an evaluation takes the mean action, as train sac's does
        if res is None:
            low, high = self.bounds
            a = (rng.uniform(low, high).astype(np.float32) if policy.agent is None
                 else policy.act(obs, deterministic=mean, gripper_now=grip))
            return a, a
        aobs = res.agent_obs(obs, self.keys, self.base_now)
        u = (np.zeros(len(res.bound), np.float32) if policy.agent is None
             else policy.act(aobs, deterministic=mean))
        return u, res.command(self.base_now, u, obs)

    # --- episodes ---
    def drive(self, index: int, info: dict) -> None:
        link, spec = self.link, self.spec
        rng = np.random.default_rng(self.seed * 100_003 + index)
        low, high = self.bounds
        self.step_began = None  # (the reset between episodes is no step)
        self.pub_episode.publish(String(data=json.dumps({"episode": index, "seed": info.get("seed"),
                                                         "actor": link.outbox.actor})))
        obs = self.observe(newer_than=self.t_now)
        res = self.residual
        if res is not None:
            self.base_now = res.first(obs)
        self.reward_success = False  # (a reward topic that still says success says it again)
        grip, total, n, inter, takeovers, was, stale = float(low[-1]), 0.0, 0, 0, 0, False, False
        rlif = RlifRewards() if self.rlif else None  # RLIF's -1 lands on the step before a takeover
        while self.running() and n < self.max_steps and not (self.total_steps and self.steps >= self.total_steps):
            link.sync(load_weights=not self.evaluating)  # an evaluation is of one policy version
            if self.paused.is_set() or link.holding(self.on_lost):
                if self.label is False:  # the operator's failure button, pressed while paused: over
                    break
                time.sleep(0.05)  # nothing is sent: the mux and the arm hold
                stale = True
                continue
            if stale:  # the arm may have been moved while the actor held
                obs, stale = self.observe(newer_than=self.t_now), False
                if res is not None:
                    self.base_now = res.first(obs)
            a, command = self.choose(obs, rng, grip)
            if not np.all(np.isfinite(command)):
                # nothing is sent (the mux and the arm hold) and nothing is stored
                self.get_logger().error(f"the policy (version {link.policy.version}) gave a non-finite action: "
                                        "holding until new weights arrive", throttle_duration_sec=5.0)
                time.sleep(0.1)
                continue
            executed, intervened = self.apply(self.shaped(command))
            nobs = self.observe()
            success = self.reward_success or self.label is True   # the operator's success button too
            began = intervened and not was
            before, after, stored = obs, nobs, executed
            if res is not None:  # the agent's view and action (the operator's as a correction)
                t_plan = time.monotonic()
                base_next = res.next(nobs)
                if time.monotonic() - t_plan > 0.25 / self.step_hz:  # the arm goes on with the last twist meanwhile
                    self.get_logger().warning(
                        f"the base took {1e3 * (time.monotonic() - t_plan):.0f} ms to plan a chunk, more than a "
                        "quarter of a step: that step lasts longer than in training (use a GPU, fewer inference "
                        "steps, or a smaller base)", throttle_duration_sec=30.0)
                before, after = (res.agent_obs(o, self.keys, b) for o, b in ((obs, self.base_now), (nobs, base_next)))
                stored = res.taken_over(executed, self.base_now, nobs) if intervened else np.clip(a, -1.0, 1.0)
                self.base_now = base_next
            # a protective stop is terminal too: nothing follows it until a person resets the arm
            tr = transition_arrays(spec, before, stored, float(success), after, success or bool(self.fault),
                                   intervened, grip)
            for ready in ([tr] if rlif is None else rlif.step(tr, began, bool(self.fault))):
                link.send(ready)
                total += float(ready["reward"])
            grip, obs, was = float(executed[-1]), nobs, intervened
            n, self.steps = n + 1, self.steps + 1
            inter, takeovers = inter + intervened, takeovers + began
            if success or self.fault or self.label is False:   # failure button: over, not terminal
                break
        for ready in (rlif.flush() if rlif is not None else []):  # the episode's last step
            link.send(ready)
            total += float(ready["reward"])
        # leave the arm at rest until the next episode's reset
        self.pub_twist.publish(twist_msg(np.zeros(6), self.t_now, self.base_frame))
        row = {"episode": index, "seed": info.get("seed"), "steps": n, "return": total,
               "success": self.episode_success(self.measured_success()), "intervention_rate": inter / max(n, 1),
               "takeovers": takeovers, "policy_version": link.policy.version, "total_steps": self.robot_steps,
               "robot_time_s": self.robot_steps / self.step_hz, "step_s_max": round(self.step_seconds(), 3)}
        if self.fault:
            row["protective_stop"] = self.fault
        if self.label is not None:
            row["operator_label"] = "success" if self.label else "failure"
        if self.evaluating:
            row["eval"] = True
            self.eval_rows.append(row)
        self.get_logger().info(json.dumps(row))
        if self.rows is not None:
            self.rows.write(json.dumps(row) + "\n")
            self.rows.flush()
        if self.rows is not None and not self.evaluating:  # training episodes' curves
            for k, v in (("episode_return", total), ("episode_success", float(row["success"])),
                         ("episode_length", n), ("intervention_rate", row["intervention_rate"]),
                         ("takeovers", takeovers), ("robot_time_s", row["robot_time_s"])):
                self.tb.add_scalar(k, v, self.robot_steps)
            self.tb.flush()

    def measured_success(self) -> bool:
        """On a robot (``reset:=home``) the reward topic's verdict (the classifier), also for
        the recording's label: nothing publishes the sim's there."""
        return self.success if self.reset_mode != "home" else self.reward_success

    def run_episode(self, index: int) -> dict:
        result = super().run_episode(index)
        if self.evaluating and len(self.eval_rows) == 1:
            self.write_video()
        return result

    def write_video(self) -> None:
        """The evaluation's first episode as an MP4 (its snapshots, taken every 0.2 s)."""
        if self.report_dir is None or not self.video_camera:
            return
        with self.lock:
            frames = [f for _, f in self.frames.get(self.video_camera, [])]
        if not frames:
            self.get_logger().warning(
                f"no frames on /{self.video_camera}/color/image_raw for the evaluation's video: start that "
                f"camera (cameras:={self.video_camera}) or set video_camera:=", once=True)
            return
        from robot_learning.data.view import write_video

        try:
            write_video(frames, self.report_dir / "videos" / f"step_{self.robot_steps:07d}.mp4", 5.0)
        except Exception as e:  # a full disk must not stop the robot's training
            self.get_logger().warning(f"the evaluation's video was not written: {e}")

    def report_evaluation(self) -> None:
        """One row for the evaluation (as train sac writes its own), TensorBoard, and curves.png."""
        rows, self.eval_rows, self.evaluating = self.eval_rows, [], False
        if not rows:
            return
        ev = {"eval_success": float(np.mean([r["success"] for r in rows])),
              "eval_return": float(np.mean([r["return"] for r in rows])),
              "eval_length": float(np.mean([r["steps"] for r in rows])), "eval_episodes": len(rows),
              "policy_version": rows[-1]["policy_version"], "total_steps": self.robot_steps,
              "robot_time_s": self.robot_steps / self.step_hz}
        self.get_logger().info(f"evaluation: {json.dumps(ev)}")
        if self.rows is None:
            return
        self.rows.write(json.dumps(ev) + "\n")
        self.rows.flush()
        for k in ("eval_success", "eval_return", "eval_length"):
            self.tb.add_scalar(k, ev[k], self.robot_steps)
        self.tb.flush()
        from robot_learning.train.compare import plot_runs

        try:
            plot_runs([(self.report_dir, "graph")], self.report_dir / "curves.png", smooth=10)
        except Exception as e:  # as for the video: a figure is not worth the run
            self.get_logger().warning(f"curves.png was not drawn: {e}")

    def run(self, running) -> None:
        self.running = running
        self.steps, index = 0, self.episodes_before
        try:
            self.spec = self.announce()
            trained = 0  # training episodes since the last evaluation
            while running() and (self.episodes <= 0 or index - self.episodes_before < self.episodes) and not (
                    self.total_steps and self.steps >= self.total_steps):
                self.evaluating = bool(self.eval_every and trained >= self.eval_every
                                       and self.link.policy.agent is not None)
                if self.evaluating and not self.eval_rows:
                    self.get_logger().info(f"evaluating policy version {self.link.policy.version} "
                                           f"({self.eval_episodes} episodes, mean action)")
                self.run_episode(index)
                index += 1
                if not self.evaluating:
                    trained += 1
                elif len(self.eval_rows) >= self.eval_episodes:
                    self.report_evaluation()
                    trained = 0
        except KeyboardInterrupt:
            pass  # stopped while waiting (for observations, the reset pose, the go)
        except RuntimeError as e:
            if not running():
                return  # a stop signal took the context down under a call in flight
            self.get_logger().error(str(e))  # one sentence: what is missing and where
            raise SystemExit(1) from None
        finally:
            self.eval_rows = []  # an evaluation cut short by the stop is not reported
            self.link.drain()
            self.get_logger().info(f"stopped after {self.steps} steps ({index - self.episodes_before} episodes); "
                                   f"{len(self.link.outbox.pending)} transitions kept for the next run")
            if self.rows is not None:
                self.rows.close()
                self.tb.close()


def main(args=None) -> None:
    run_until_stopped(GraphActor, args)  # Ctrl-C: finish over DDS first (acks, last transitions)


if __name__ == "__main__":
    main()
