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


def save_untrained(path: Path, **kw) -> Path:
    from robot_learning.data.schema import load_recipe
    from robot_learning.policies.checkpoint import save_checkpoint

    recipe = load_recipe(project_root() / "datasets" / "recipes" / "workcell.yaml")
    return save_checkpoint(untrained_policy(**kw), path, {"recipe": recipe.raw})
