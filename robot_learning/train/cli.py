"""``robot-learning train diffusion --dataset ...`` (and, under torchrun, on several GPUs);
``robot-learning train sac --env ...`` (off-policy RL on a gymnasium env or the workcell);
``robot-learning train residual --base CKPT`` (PPO), ``train residual-sac --base CKPT`` and
``train dsrl --base CKPT`` (RL on top of a frozen diffusion policy); ``train slow-fast --base
CKPT --dataset ...`` (touch and wrench correcting a frozen diffusion policy at the control
rate); ``robot-learning train classifier --dataset ...`` (a success detector, served as a reward).

Each kind's flags are its config dataclass's fields, so a field added there is a flag here."""

from __future__ import annotations

import argparse
import inspect
import re
from dataclasses import fields

from robot_learning.train.diffusion import TrainConfig

# fields given as comma-separated lists, with the type of their items
_DIFFUSION_LISTS = {"obs": str, "images": str, "image_size": int, "image_roi": str, "down_dims": int,
                    "relative": str}
_SAC_LISTS = {"obs": str, "images": str, "hidden": int}
_RESIDUAL_LISTS = {"obs": str, "hidden": int}
_SLOW_FAST_LISTS = {"obs": str, "hidden": int, "dims": int}
_CLASSIFIER_LISTS = {"dataset": str, "obs": str, "images": str, "image_size": int, "hidden": int}


_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")
_COMMENT = re.compile(r"^\s+#\s?(.*)$")


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comments in the config's source (the lines above it and the one beside it),
    as its flag's help: the config is where a field is explained, so ``--help`` says the same."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if "__dataclass_fields__" not in vars(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()[1:]
        except (OSError, TypeError):  # no source (a frozen build): flags without help
            continue
        above: list[str] = []
        for line in lines:
            if m := _COMMENT.match(line):
                above.append(m.group(1).strip())
            elif (m := _FIELD.match(line)) and m.group(1) in klass.__dataclass_fields__:
                text = " ".join([*above, m.group(2) or ""]).strip()
                if text:
                    out[m.group(1)] = text
                above = []
            else:
                above = []
    return out


def add_config_arguments(p, defaults, lists: dict[str, type], helps: dict[str, str] | None = None) -> None:
    """One flag per field of the dataclass instance ``defaults`` (``lists`` comma-separated), its
    help the field's comment unless ``helps`` says otherwise."""
    cls = type(defaults)
    helps = {**field_comments(cls), **(helps or {})}
    for f in fields(cls):
        name, value = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        text = helps.get(f.name, "")
        if f.name in lists:
            text = f"{text} (comma-separated)".strip()
            p.add_argument(name, default=",".join(str(v) for v in value), help=text)
        elif isinstance(value, bool):
            p.add_argument(name, default=value, action=argparse.BooleanOptionalAction, help=text or None)
        elif isinstance(value, str):
            p.add_argument(name, default=value, help=text or None)
        else:
            p.add_argument(name, type=type(value), default=value, help=text or None)


def config_from_args(a, cls, lists: dict[str, type]):
    values = {}
    for f in fields(cls):
        v = getattr(a, f.name)
        if f.name in lists:
            v = [lists[f.name](x.strip()) for x in str(v).split(",") if x.strip()]
        values[f.name] = v
    return cls(**values)


def add_parser(sub) -> None:
    from robot_learning.train.classifier import ClassifierTrainConfig
    from robot_learning.train.residual import ResidualTrainConfig
    from robot_learning.train.sac import DsrlTrainConfig, ResidualSacTrainConfig, SACTrainConfig
    from robot_learning.train.slow_fast import SlowFastTrainConfig

    tr = sub.add_parser("train", help="train a policy on a dataset (torchrun for several GPUs)")
    kinds = tr.add_subparsers(dest="kind", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    add_config_arguments(kinds.add_parser("diffusion", help="diffusion policy", formatter_class=fmt),
                         TrainConfig(dataset=""), _DIFFUSION_LISTS,
                         {"dataset": "zarr dataset to train on (with --resume: the run's own)",
                          "image_roi": "comma-separated camera:x0:y0:x1:y1: the region of a camera's view the "
                                       "policy reads (fractions of the frame; the server cuts it from live frames "
                                       "too); default: the region `dataset shrink --roi` cut, if any",
                          "threads": "torch CPU threads: 0 torch's default (every core), -1 the fastest of 1, half "
                                     "and all cores, timed every minute against what else runs"})
    add_config_arguments(kinds.add_parser("sac", help="SAC (RLPD choices) on a gymnasium env or workcell/<task>, "
                                          "optionally from demonstrations", formatter_class=fmt),
                         SACTrainConfig(), _SAC_LISTS)
    add_config_arguments(kinds.add_parser("dsrl", help="DSRL: SAC steering a frozen diffusion policy (--base) by its "
                                          "initial noise", formatter_class=fmt), DsrlTrainConfig(), _SAC_LISTS)
    add_config_arguments(kinds.add_parser("residual", help="a residual policy on a frozen diffusion policy (--base), "
                                          "trained with PPO in parallel envs", formatter_class=fmt),
                         ResidualTrainConfig(), _RESIDUAL_LISTS)
    add_config_arguments(kinds.add_parser("residual-sac", help="a residual policy on a frozen diffusion policy "
                                          "(--base), trained with SAC (off-policy)", formatter_class=fmt),
                         ResidualSacTrainConfig(), _SAC_LISTS)
    add_config_arguments(kinds.add_parser("slow-fast", help="the fast half of a slow-fast policy: touch and wrench "
                                          "correct a frozen diffusion policy (--base) at the control rate",
                                          formatter_class=fmt), SlowFastTrainConfig(), _SLOW_FAST_LISTS)
    add_config_arguments(kinds.add_parser("classifier", help="success classifier (a reward) on labelled datasets",
                                          formatter_class=fmt), ClassifierTrainConfig(), _CLASSIFIER_LISTS)


def run(a) -> int:
    if a.kind == "classifier":
        from robot_learning.train.classifier import ClassifierTrainConfig, train_classifier

        train_classifier(config_from_args(a, ClassifierTrainConfig, _CLASSIFIER_LISTS))
        return 0
    if a.kind in ("sac", "dsrl", "residual-sac"):
        from robot_learning.train.sac import DsrlTrainConfig, ResidualSacTrainConfig, SACTrainConfig, train_sac

        cls = {"dsrl": DsrlTrainConfig, "residual-sac": ResidualSacTrainConfig}.get(a.kind, SACTrainConfig)
        train_sac(config_from_args(a, cls, _SAC_LISTS))
        return 0
    if a.kind == "slow-fast":
        from robot_learning.train.slow_fast import SlowFastTrainConfig, train_slow_fast

        train_slow_fast(config_from_args(a, SlowFastTrainConfig, _SLOW_FAST_LISTS))
        return 0
    if a.kind == "residual":
        from robot_learning.train.residual import ResidualTrainConfig, train_residual

        train_residual(config_from_args(a, ResidualTrainConfig, _RESIDUAL_LISTS))
        return 0
    cfg = config_from_args(a, TrainConfig, _DIFFUSION_LISTS)
    if not cfg.dataset and not cfg.resume:
        raise SystemExit("train: --dataset is required (or --resume RUN_DIR to continue a run)")
    from robot_learning.train.diffusion import train

    train(cfg)
    return 0
