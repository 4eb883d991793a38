"""An encoder for taxel grids: fingertip pads as force images, not flattened vectors.

A contact spreads over neighbouring taxels, and what a policy needs from it is local shape
(an edge, a shear pattern) and where on the pad it sits (how the object lies in the hand).
Convolutions see the first, and the map is flattened, not pooled, before the projection so
the second survives: a pooled feature is the same wherever the contact is.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# grids larger than this per side are averaged down to it first (a GelSight reduced to 16x16
# keeps its layout; the projection's size stays bounded)
MAX_SIDE = 8


class TaxelEncoder(nn.Module):
    """[B, rows, cols, C] forces (normalized) -> [B, out_dim]."""

    def __init__(self, rows: int, cols: int, channels: int = 3, out_dim: int = 32, width: int = 32):
        super().__init__()
        self.side = (min(rows, MAX_SIDE), min(cols, MAX_SIDE))
        self.conv1 = nn.Conv2d(channels, width, 3, 1, 1)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1)
        self.proj = nn.Sequential(nn.Linear(width * self.side[0] * self.side[1], out_dim), nn.LayerNorm(out_dim))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x = grid.permute(0, 3, 1, 2)
        if tuple(x.shape[-2:]) != self.side:
            x = F.adaptive_avg_pool2d(x, self.side)
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h) + h)
        return self.proj(h.flatten(1))
