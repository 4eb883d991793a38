"""Untrained diffusion policies with the workcell's action layout and made-up normalization.

Latency, scheduling and safety do not depend on training: benchmarks measure inference with
these, tests deploy them (including deliberately broken ones) through the policy server, and
on a new robot computer one tells how fast inference runs before any data is collected.
"""

from __future__ import annotations

from pathlib import Path

from robot_learning.paths import project_root


def untrained_policy(obs_dims: dict[str, int], image_shapes: dict | None = None, lo=None, hi=None, **cfg):
    """A diffusion policy with the workcell's action layout and made-up normalization (see the module)."""
    import torch

    from robot_learning.policies.diffusion import DiffusionConfig, DiffusionPolicy
    from robot_learning.policies.normalizer import Normalizer

    torch.manual_seed(0)
    lo = [-0.04] * 6 + [0.0] if lo is None else lo
    hi = [0.04] * 6 + [1.0] if hi is None else hi
    stats = {k: {"min": [-1.0] * d, "max": [1.0] * d} for k, d in obs_dims.items()}
    stats["action"] = {"min": list(lo), "max": list(hi)}
    config = dict(pred_horizon=16, action_horizon=8, down_dims=[64, 128, 256], task="pick_place")
    config.update(cfg)
    dcfg = DiffusionConfig(obs_dims=dict(obs_dims), action_dim=7, image_shapes=dict(image_shapes or {}), **config)
    return DiffusionPolicy(dcfg, Normalizer(stats))


def untrained_pose_policy(center, half_width: float = 0.01, gripper: float = 0.0, **cfg):
    """An untrained ``tcp_pose`` policy: every action lands within ``half_width`` of ``center``
    (x y z qx qy qz qw, base frame), so its plans are valid wherever it samples; the gripper
    command within 0.01 of ``gripper`` (0: open, 1: closed)."""
    import numpy as np
    import torch

    from robot_learning.policies.diffusion import DiffusionConfig, DiffusionPolicy
    from robot_learning.policies.normalizer import Normalizer

    torch.manual_seed(0)
    center = np.asarray(center, float)
    obs = {"ee_pose.data": 7, "gripper_state.position": 2}
    stats = {k: {"min": [-1.0] * d, "max": [1.0] * d} for k, d in obs.items()}
    g = min(max(gripper, 0.0), 0.99)
    stats["action"] = {"min": [*(center - half_width), g], "max": [*(center + half_width), g + 0.01]}
    config = dict(pred_horizon=16, action_horizon=8, down_dims=[16, 32], inference_steps=4, task="pick_place")
    config.update(cfg)
    return DiffusionPolicy(DiffusionConfig(obs_dims=obs, action_dim=8, action_kind="tcp_pose", **config),
                           Normalizer(stats))


def save_untrained(path: Path, policy=None, **kw) -> Path:
    """``policy`` (or ``untrained_policy(**kw)``) saved as a checkpoint on the workcell recipe."""
    from robot_learning.data.schema import load_recipe
    from robot_learning.policies.checkpoint import save_checkpoint

    recipe = load_recipe(project_root() / "datasets" / "recipes" / "workcell.yaml")
    return save_checkpoint(policy if policy is not None else untrained_policy(**kw), path, {"recipe": recipe.raw})
