"""``robot-learning train diffusion --dataset ...`` (and, under torchrun, on several GPUs);
``robot-learning train sac --env ...`` (off-policy RL on a gymnasium env or the workcell)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from robot_learning.train.diffusion import TrainConfig

_LISTS = {"obs", "images", "image_size", "down_dims", "relative"}


def add_parser(sub) -> None:
    tr = sub.add_parser("train", help="train a policy on a dataset (torchrun for several GPUs)")
    kinds = tr.add_subparsers(dest="kind", required=True)
    d = kinds.add_parser("diffusion", help="diffusion policy", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = TrainConfig(dataset="")
    for f in fields(TrainConfig):
        name = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if f.name == "dataset":
            d.add_argument(name, default="", help="zarr dataset to train on (with --resume: the run's own)")
        elif f.name in _LISTS:
            d.add_argument(name, default=",".join(str(v) for v in value), help="comma-separated")
        elif isinstance(value, bool):
            d.add_argument(name, default=value, action=argparse.BooleanOptionalAction)
        else:
            d.add_argument(name, type=type(value), default=value)
    from robot_learning.train.sac import add_arguments

    add_arguments(kinds.add_parser("sac", help="SAC (RLPD choices) on a gymnasium env or workcell/<task>, "
                                   "optionally from demonstrations",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter))


def run(a) -> int:
    if a.kind == "sac":
        from robot_learning.train.sac import run_cli

        return run_cli(a)
    values = {}
    for f in fields(TrainConfig):
        v = getattr(a, f.name)
        if f.name in _LISTS:
            items = [x.strip() for x in str(v).split(",") if x.strip()]
            v = [int(x) for x in items] if f.name in ("image_size", "down_dims") else items
        values[f.name] = v
    if not values["dataset"] and not values["resume"]:
        raise SystemExit("train: --dataset is required (or --resume RUN_DIR to continue a run)")
    from robot_learning.train.diffusion import train

    train(TrainConfig(**values))
    return 0
