"""Per-dimension min/max normalization to [-1, 1], fitted on the dataset and stored in the checkpoint."""

from __future__ import annotations

import numpy as np
import torch


class Normalizer:
    def __init__(self, stats: dict[str, dict[str, list[float]]] | None = None):
        self.stats = {k: {"min": np.asarray(v["min"], np.float32), "max": np.asarray(v["max"], np.float32)}
                      for k, v in (stats or {}).items()}

    def fit(self, key: str, data: np.ndarray) -> None:
        flat = data.reshape(len(data), -1)
        self.stats[key] = {"min": flat.min(0).astype(np.float32), "max": flat.max(0).astype(np.float32)}

    def _scale(self, key: str, like: torch.Tensor):
        """(min, span, which dimensions are constant): a constant one gets a unit span."""
        s = self.stats[key]
        lo = torch.as_tensor(s["min"], device=like.device)
        span = torch.as_tensor(s["max"] - s["min"], device=like.device)
        constant = span < 1e-6
        return lo, torch.where(constant, torch.ones_like(span), span), constant

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        lo, span, _ = self._scale(key, x)
        shape = x.shape
        return ((x.reshape(*shape[:-1], -1) - lo) / span * 2 - 1).reshape(shape)

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Back to the data's units. A dimension that never varied in the data (a gripper held
        closed through every demonstration) comes back as exactly that value: the network's
        output there is noise around it, and the policy server refuses a chunk outside the
        data's range, so a closed gripper at 1.07 would hold the arm still for good."""
        lo, span, constant = self._scale(key, x)
        return torch.where(constant, lo.to(x.dtype), (x + 1) / 2 * span + lo)

    def to_json(self) -> dict:
        return {k: {"min": v["min"].tolist(), "max": v["max"].tolist()} for k, v in self.stats.items()}
