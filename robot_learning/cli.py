"""The ``robot-learning`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="robot-learning", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    la = sub.add_parser("launch", help="run a ROS 2 YAML launch file (ros2 launch where installed)")
    la.add_argument("file")
    la.add_argument("args", nargs="*", help="name:=value launch arguments")
    la.add_argument("--builtin", action="store_true", help="use the built-in runner even if ros2 exists")

    de = sub.add_parser("demo", help="collect, train, deploy and evaluate on the sim workcell; report in runs/")
    de.add_argument("--quick", action="store_true", help="the same pipeline cut down (about 2 minutes)")
    de.add_argument("--episodes", type=int, default=None, help="demonstrations to collect")
    de.add_argument("--train-steps", type=int, default=None)
    de.add_argument("--eval-episodes", type=int, default=None)
    de.add_argument("--out", default="runs")
    de.add_argument("--dataset", default=None, help="zarr store to record into (default: datasets/demo-<time>.zarr)")

    co = sub.add_parser("collect", help="collect demonstrations into a dataset (launch/teleop_collect.launch.yaml)")
    co.add_argument("--device", default="scripted", choices=("scripted", "spacemouse", "spacemouse_hid", "gamepad",
                                                               "keyboard"))
    co.add_argument("--task", default="pick_place")
    co.add_argument("--episodes", type=int, default=10, help="scripted device: how many episodes")
    co.add_argument("--dataset", default="datasets/workcell.zarr")
    co.add_argument("--real-time-factor", type=float, default=1.0)
    co.add_argument("--cameras", default="front,wrist")
    co.add_argument("launch_args", nargs="*", help="more name:=value launch arguments (sim:=false on a robot)")

    ur = sub.add_parser("urdf", help="print the robot's URDF (rviz, MoveIt, robot_state_publisher)")
    ur.add_argument("--robot", default="hardware/robots/panda.yaml")
    ur.add_argument("--calibration", default="calibration/workcell.yaml", help="cameras and base ('' for none)")


    from robot_learning.calibrate.cli import add_parser as add_calibrate
    from robot_learning.data.cli import add_parser as add_dataset
    from robot_learning.evaluate import add_parser as add_evaluate
    from robot_learning.sim.mirror import add_parser as add_mirror
    from robot_learning.sim.sysid import add_parser as add_sysid
    from robot_learning.train.cli import add_parser as add_train
    from robot_learning.train.compare import add_parser as add_plot

    add_dataset(sub)
    add_train(sub)
    add_plot(sub)
    add_evaluate(sub)
    add_calibrate(sub)
    add_mirror(sub)
    add_sysid(sub)

    a = ap.parse_args(argv)
    from robot_learning.paths import use_local_dds_profile
    from robot_learning.policies.checkpoint import PolicyError

    use_local_dds_profile()
    if a.cmd in ("train", "evaluate", "demo", "calibrate", "mirror", "sysid"):  # they render: no display needed
        from robot_learning.headless import use_headless_gl

        use_headless_gl()
    try:
        return _dispatch(a)
    except PolicyError as e:  # a damaged or unfitting checkpoint: its one sentence, not a traceback
        print(f"robot-learning {a.cmd}: {e}", file=sys.stderr)
        return 1


def _dispatch(a: argparse.Namespace) -> int:
    """Runs the chosen command; its exit status."""
    if a.cmd == "sysid":
        from robot_learning.sim.sysid import run as sysid_run

        return sysid_run(a)
    if a.cmd == "mirror":
        from robot_learning.sim.mirror import run as mirror_run

        return mirror_run(a)
    if a.cmd == "calibrate":
        from robot_learning.calibrate.cli import run as calibrate_run

        return calibrate_run(a)
    if a.cmd == "dataset":
        from robot_learning.data.cli import run as dataset_run

        return dataset_run(a)
    if a.cmd == "plot":
        from robot_learning.train.compare import run as plot_run

        return plot_run(a)
    if a.cmd == "train":
        from robot_learning.train.cli import run as train_run

        return train_run(a)
    if a.cmd == "evaluate":
        from robot_learning.evaluate import run_evaluate

        return run_evaluate(a)
    if a.cmd == "launch":
        from robot_learning.launch import main as launch_main

        return launch_main(a.file, a.args, force_builtin=a.builtin)
    if a.cmd == "demo":
        from robot_learning.demo import DemoPlan, run_demo

        plan = DemoPlan.quick() if a.quick else DemoPlan()
        for field, value in (("episodes", a.episodes), ("train_steps", a.train_steps),
                             ("eval_episodes", a.eval_episodes)):
            if value is not None:
                setattr(plan, field, value)
        return run_demo(a.quick, a.out, a.dataset, plan)
    if a.cmd == "collect":
        from robot_learning.collect import run_collect

        return run_collect(a.device, a.task, a.episodes, a.dataset, a.real_time_factor, a.cameras, a.launch_args)
    if a.cmd == "urdf":
        from robot_learning.config import load_calibration, load_robot
        from robot_learning.description import urdf

        print(urdf(load_robot(a.robot), load_calibration(a.calibration) if a.calibration else None), end="")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
