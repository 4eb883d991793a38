"""Damaged checkpoints and training state: each way a file can be broken (a pickle in place of
the weights, cut short, hand-edited config.json, a normalizer that does not fit) ends in one
PolicyError sentence naming the file, the problem and what to do, and the CLI prints that
sentence and exits non-zero instead of a traceback. config.json is checked against an explicit
schema before any model is built."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from robot_learning.policies.checkpoint import PolicyError, save_checkpoint
from robot_learning.policies.registry import load_policy
from robot_learning.policies.untrained import untrained_policy

pytestmark = pytest.mark.compute  # no ROS, no timing: `make test` runs it beside the rest

OBS = "joint_states.position"
REEXPORT = "re-export the checkpoint"


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> Path:
    """A real, tiny checkpoint that loads; each test damages its own copy."""
    policy = untrained_policy({OBS: 9}, pred_horizon=8, action_horizon=4, down_dims=[8, 16], train_timesteps=10,
                              inference_steps=4)
    path = save_checkpoint(policy, tmp_path_factory.mktemp("ckpt") / "ckpt")
    load_policy(path)   # so that the damage below is the only reason a copy fails
    return path


def edit_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(ck: Path) -> None:
        meta = json.loads((ck / "config.json").read_text())
        change(meta)
        (ck / "config.json").write_text(json.dumps(meta))
    return damage


def cut(name: str, keep: Callable[[int], int]) -> Callable[[Path], None]:
    def damage(ck: Path) -> None:
        data = (ck / name).read_bytes()
        (ck / name).write_bytes(data[:keep(len(data))])
    return damage


def weights_pickled(ck: Path) -> None:
    (ck / "model.safetensors").write_bytes(pickle.dumps({"net.weight": [0.0, 1.0]}))


def weights_torch_saved(ck: Path) -> None:
    torch.save({"net.weight": torch.zeros(2)}, ck / "model.safetensors")


def set_config(key: str, value) -> Callable[[Path], None]:
    return edit_config(lambda m: m["config"].__setitem__(key, value))


CASES = {  # id: (damage, the file the message must name, what it must say)
    "pickle-as-weights": (weights_pickled, "model.safetensors",
                          ["is a Python pickle", "not a safetensors file", "never read", REEXPORT]),
    "torch-save-as-weights": (weights_torch_saved, "model.safetensors",
                              ["is a Python pickle", "not a safetensors file", REEXPORT]),
    "weights-cut-in-half": (cut("model.safetensors", lambda n: n // 2), "model.safetensors",
                            ["is cut short", " of ", " bytes", REEXPORT]),
    "weights-cut-in-header": (cut("model.safetensors", lambda n: 20), "model.safetensors",
                              ["is cut short: 20 bytes, its header alone needs", REEXPORT]),
    "config-cut-in-half": (cut("config.json", lambda n: n // 2), "config.json",
                           ["is not valid JSON", "damaged or cut short", REEXPORT]),
    "string-for-int": (set_config("action_dim", "7"), "config.json",
                       ["config.action_dim must be an integer >= 1, not '7'", REEXPORT]),
    "string-for-list": (set_config("down_dims", "8,16"), "config.json",
                        ["config.down_dims must be a non-empty list of integers >= 1, not '8,16'"]),
    "bool-for-int": (set_config("obs_horizon", True), "config.json",
                     ["config.obs_horizon must be an integer >= 1, not True"]),
    "value-not-allowed": (set_config("sampler", "euler"), "config.json",
                          ["config.sampler must be one of ddim, dpmsolver, ddpm, not 'euler'"]),
    "unknown-config-keys": (edit_config(lambda m: m["config"].update(n_layers=4, dropout=0.1)), "config.json",
                            ["unknown keys config.n_layers, config.dropout", REEXPORT]),
    "unknown-top-level-key": (edit_config(lambda m: m.update(weights_sha="x")), "config.json",
                              ["unknown key weights_sha", REEXPORT]),
    "required-key-missing": (edit_config(lambda m: m["config"].pop("action_dim")), "config.json",
                             ["config.action_dim is missing", REEXPORT]),
    "normalizer-wrong-shape": (edit_config(lambda m: m["normalizer"]["action"].update(min=[0.0] * 3)), "config.json",
                               ["normalizer.action.min has 3 values, the config needs 7", REEXPORT]),
    "normalizer-stats-missing": (edit_config(lambda m: m["normalizer"].pop(OBS)), "config.json",
                                 [f"normalizer has no min/max stats for '{OBS}'", REEXPORT]),
    "normalizer-not-numbers": (edit_config(lambda m: m["normalizer"][OBS].update(max="1")), "config.json",
                               [f"normalizer.{OBS}.max must be a list of finite numbers, not '1'"]),
    "weights-do-not-fit-config": (set_config("down_dims", [16, 32]), "model.safetensors",
                                  ["the weights do not fit the configuration", ", expected [", REEXPORT]),
}


@pytest.mark.parametrize("case", CASES)
def test_each_damaged_checkpoint_is_one_sentence_naming_file_problem_and_fix(intact, tmp_path, case):
    damage, name, says = CASES[case]
    ck = Path(shutil.copytree(intact, tmp_path / "ck"))
    damage(ck)
    with pytest.raises(PolicyError) as e:
        load_policy(ck)
    msg = str(e.value)
    assert msg.startswith(str(ck / name)), msg
    for part in says:
        assert part in msg, msg
    assert "\n" not in msg and "Traceback" not in msg


def test_the_schema_covers_every_config_field_and_value_the_code_accepts():
    from robot_learning.policies.checkpoint import ACTION_KINDS, CONFIG_SCHEMA, SAMPLERS
    from robot_learning.policies.diffusion import DiffusionConfig, make_scheduler
    from robot_learning.runtime import actions

    assert set(CONFIG_SCHEMA) == {f.name for f in fields(DiffusionConfig)}
    assert ACTION_KINDS == actions.ACTION_KINDS
    for name in SAMPLERS:
        make_scheduler(name, 10)


@pytest.mark.parametrize("case", ["pickle-as-weights", "config-cut-in-half"])
def test_cli_prints_the_sentence_on_stderr_and_exits_non_zero(intact, tmp_path, case):
    damage, name, says = CASES[case]
    ck = Path(shutil.copytree(intact, tmp_path / "ck"))
    damage(ck)
    r = subprocess.run([sys.executable, "-m", "robot_learning.cli", "evaluate", "--where", "env", "--checkpoint",
                        str(ck), "--episodes", "1", "--out", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert str(ck / name) in r.stderr and says[0] in r.stderr, r.stderr


TINY = dict(obs=[OBS], images=[], pred_horizon=8, action_horizon=4, down_dims=[8, 16], batch_size=8, warmup_steps=1,
            eval_every=2, eval_episodes=0, only_success=False, threads=1)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-step training run (and its dataset) with train_state/ to resume from."""
    from test_dataset import RECIPE, record_episode

    from robot_learning.data.store import DatasetWriter
    from robot_learning.train.diffusion import TrainConfig, train

    root = tmp_path_factory.mktemp("train")
    w = DatasetWriter(root / "d.zarr", RECIPE)
    for i in range(2):
        ep = w.start_episode({"task": "pick_place", "operator": "test"})
        record_episode(ep, t0=10.0 + 10 * i)
        ep.finish(success=True)
    w.close()
    run = train(TrainConfig(dataset=str(root / "d.zarr"), out=str(root / "run"), steps=2, **TINY), progress=False)
    return run, root / "d.zarr"


STATE_CASES = {
    "model.safetensors": (weights_pickled, ["is a Python pickle", "not a safetensors file"]),
    "ema.safetensors": (cut("ema.safetensors", lambda n: n - 100), ["is cut short"]),
    "optim.pt": (cut("optim.pt", lambda n: n // 2), ["cannot be restored"]),
}


@pytest.mark.parametrize("name", STATE_CASES)
def test_damaged_training_state_refuses_to_resume_with_the_same_kind_of_sentence(trained_run, tmp_path, name):
    from robot_learning.train.diffusion import TrainConfig, train

    run, dataset = trained_run
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    damage, says = STATE_CASES[name]
    damage(copy / "train_state")
    with pytest.raises(PolicyError) as e:
        train(TrainConfig(dataset=str(dataset), resume=str(copy), steps=4, eval_every=2, eval_episodes=0),
              progress=False)
    msg = str(e.value)
    assert msg.startswith(str(copy / "train_state" / name)), msg
    for part in says + ["resume from an intact copy of the run, or train afresh"]:
        assert part in msg, msg
    assert "\n" not in msg
