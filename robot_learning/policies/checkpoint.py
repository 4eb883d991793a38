"""Checkpoints: weights as safetensors (tensors only, so loading never runs code) and a JSON
file with the policy's configuration, its input/output spec and the normalization statistics."""

from __future__ import annotations

import json
from pathlib import Path

FORMAT, VERSION = "robot_learning.policy", 1


class PolicyError(RuntimeError):
    """A checkpoint that cannot be used as asked; the message says why and what to do."""


def save_checkpoint(policy, path: str | Path, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    tmp = path / "model.safetensors.partial"
    save_file(state, str(tmp))
    tmp.replace(path / "model.safetensors")
    meta = {"format": FORMAT, "version": VERSION, "policy": "diffusion", "config": policy.cfg.to_json(),
            "spec": policy.cfg.spec(), "normalizer": policy.normalizer.to_json(), **(extra or {})}
    (path / "config.json.partial").write_text(json.dumps(meta, indent=1))
    (path / "config.json.partial").replace(path / "config.json")
    return path


def _spec_diff(want: dict, have: dict) -> list[str]:
    return [f"{k}: the checkpoint has {have.get(k)!r}, expected {want[k]!r}" for k in want if have.get(k) != want[k]]


def load_checkpoint(path: str | Path, expect_spec: dict | None = None, device: str = "cpu"):
    """The policy saved at ``path``; ``expect_spec`` (what the caller will feed it) must match."""
    from safetensors.torch import load_file

    from robot_learning.policies.diffusion import DiffusionConfig, DiffusionPolicy
    from robot_learning.policies.normalizer import Normalizer

    path = Path(path)
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise PolicyError(f"{path} is not a checkpoint: it needs config.json and model.safetensors")
    meta = json.loads(cfg_file.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise PolicyError(f"{path}: format {meta.get('format')} v{meta.get('version')}, this robot-learning "
                          f"reads {FORMAT} v{VERSION}")
    if meta.get("policy") != "diffusion":
        raise PolicyError(f"{path}: policy type '{meta.get('policy')}' is not supported")
    if expect_spec is not None:
        diff = _spec_diff(expect_spec, meta["spec"])
        if diff:
            raise PolicyError(f"{path} does not fit these observations/actions: " + "; ".join(diff))
    policy = DiffusionPolicy(DiffusionConfig(**meta["config"]), Normalizer(meta["normalizer"]))
    missing, unexpected = policy.load_state_dict(load_file(str(weights), device=device), strict=False)
    if missing or unexpected:
        raise PolicyError(f"{path}: weights do not match the configuration (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    return policy.to(device).eval(), meta
