"""A learned success detector: the reward for tasks where nothing on a real robot says "done".

HIL-SERL's reward on a real robot is a binary classifier on camera frames; ours reads the
same recipe keys as every policy (state, images, or both), so a classifier trained on
recorded demonstrations runs on the live topics unchanged (``reward_node``) and in the env
(``train sac --reward classifier:PATH``).

Training (labels, held-out episodes): ``robot_learning.train.classifier``. A checkpoint is
safetensors and JSON, so loading one never runs code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

FORMAT = "robot_learning.success_classifier"


@dataclass
class ClassifierConfig:
    """The model; field names shared with SACConfig's, because the encoder is the SAC one."""

    obs_keys: list[str]
    obs_dim: int
    image_keys: list[str] = field(default_factory=list)
    image_size: list[int] = field(default_factory=lambda: [64, 64])
    image_channels: int = 3
    encoder_dim: int = 64
    encoder_widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    shift_pad: int = 4
    threshold: float = 0.5


class SuccessClassifier(nn.Module):
    """p(success | observation): the SAC encoder (normalized state, one CNN per camera) and an MLP."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        from robot_learning.policies.sac import Encoder, mlp

        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.head = mlp(self.encoder.out_dim, cfg.hidden, 1, layer_norm=True)

    def forward(self, obs: dict[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        """Logits, one per row."""
        return self.head(self.encoder(obs, augment=augment))[:, 0]

    @torch.no_grad()
    def probability(self, obs: dict[str, np.ndarray]) -> float:
        """One observation (``state`` flat in ``obs_keys`` order, images [H, W, 3] uint8)."""
        batch = {k: torch.as_tensor(np.asarray(v)[None]) for k, v in obs.items()}
        return float(torch.sigmoid(self(batch))[0])

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        from robot_learning.policies.checkpoint import write_checkpoint

        return write_checkpoint(self, path, {"format": FORMAT, "version": 1, "config": asdict(self.cfg),
                                             **(extra or {})})


def load_classifier(path: str | Path, device: str = "cpu") -> tuple[SuccessClassifier, dict]:
    """A saved classifier and its config.json; damage of any kind is one ``PolicyError`` sentence."""
    from robot_learning.policies.checkpoint import PolicyError, load_weights, read_json

    path = Path(path)
    fix = "train it again with `robot-learning train classifier`"
    meta = read_json(path / "config.json", fix)
    if meta.get("format") != FORMAT:
        raise PolicyError(f"{path}: not a success classifier (format {meta.get('format')!r}, want {FORMAT!r})")
    known = set(ClassifierConfig.__dataclass_fields__)
    raw = meta.get("config")
    if not isinstance(raw, dict) or set(raw) - known or {"obs_keys", "obs_dim"} - set(raw):
        raise PolicyError(f"{path / 'config.json'}: 'config' must hold ClassifierConfig's fields "
                          f"(unknown: {sorted(set(raw or {}) - known)}); {fix}")
    try:
        model = SuccessClassifier(ClassifierConfig(**raw))
    except (TypeError, ValueError) as e:
        raise PolicyError(f"{path / 'config.json'}: {e}; {fix}") from None
    load_weights(model, path / "model.safetensors", device, fix)
    return model.to(device).eval(), meta


class LiveReward:
    """The classifier on live samples (what ``reward_node`` runs): each ``tick`` gives
    p(success) for the newest observation, and success once it has held for ``hold`` ticks
    in a row, so one lucky frame does not end an episode."""

    def __init__(self, model: SuccessClassifier, hold: int = 3, threshold: float | None = None):
        from robot_learning.runtime.buffers import ObsBuffers

        cfg = model.cfg
        self.model, self.hold = model, max(1, hold)
        self.threshold = cfg.threshold if threshold is None else threshold
        self.buffers = ObsBuffers(cfg.obs_keys, cfg.image_keys, 1, 0.1,
                                  tuple(cfg.image_size) if cfg.image_keys else None)
        self.streak = 0

    @property
    def streams(self) -> list[str]:
        return self.buffers.streams

    def add(self, stream: str, t: float, arrays: dict[str, np.ndarray]) -> None:
        self.buffers.add(stream, t, arrays)

    def reset(self) -> None:
        """A new episode: no streak, and no sample from the last one (a sim's clock starts over)."""
        self.streak = 0
        self.buffers.clear()

    def tick(self) -> tuple[float, bool] | None:
        """(probability, success), or None while a stream has sent nothing yet."""
        w = self.buffers.window()
        if w is None:
            return None
        _, win = w
        cfg = self.model.cfg
        obs = {"state": np.concatenate([win[f"obs/{k}"][-1] for k in cfg.obs_keys]).astype(np.float32)
               if cfg.obs_keys else np.zeros(0, np.float32)}
        for cam in cfg.image_keys:
            obs[cam] = win[f"image/{cam}"][-1]
        p = self.model.probability(obs)
        self.streak = self.streak + 1 if p >= self.threshold else 0
        return p, self.streak >= self.hold
