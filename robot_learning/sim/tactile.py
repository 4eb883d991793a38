"""Fingertip taxel grids from MuJoCo contacts.

Each contact on a pad is resolved to its 3-D force (``mj_contactForce``), expressed in the
pad's frame and spread bilinearly over the taxels around the contact point, so a grid sums
to the pad's net force and a sliding contact moves smoothly across taxels.
"""

from __future__ import annotations

import mujoco
import numpy as np

from robot_learning.sim.model import PAD_GEOMS


class TactilePads:
    """Reads (rows, cols, 3) force grids for each fingertip pad, in newtons, pad frame."""

    def __init__(self, model: mujoco.MjModel, rows: int, cols: int, pad_size: tuple[float, float]):
        self.rows, self.cols = rows, cols
        self.pad_size = np.asarray(pad_size, float)
        self.names = list(PAD_GEOMS)
        self.geoms = {mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, g): n for n, g in PAD_GEOMS.items()}
        self.sites = {n: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, f"{n.split('_')[0]}_pad_site")
                      for n in self.names}
        self._f6 = np.zeros(6)

    def read(self, model: mujoco.MjModel, data: mujoco.MjData) -> dict[str, np.ndarray]:
        grids = {n: np.zeros((self.rows, self.cols, 3), np.float32) for n in self.names}
        for i in range(data.ncon):
            c = data.contact[i]
            for gid, sign in ((c.geom1, -1.0), (c.geom2, 1.0)):
                name = self.geoms.get(gid)
                if name is None:
                    continue
                mujoco.mj_contactForce(model, data, i, self._f6)
                frame = c.frame.reshape(3, 3)  # rows: normal (geom1 -> geom2), two tangents
                f_world = sign * (frame.T @ self._f6[:3])  # force the other body puts on the pad
                site = self.sites[name]
                rot = data.site_xmat[site].reshape(3, 3)
                f_pad = rot.T @ f_world
                p_pad = rot.T @ (c.pos - data.site_xpos[site])
                self._splat(grids[name], p_pad[0], p_pad[1], f_pad)
        return grids

    def _splat(self, grid: np.ndarray, u: float, v: float, force: np.ndarray) -> None:
        # Continuous taxel coordinates; taxel centres sit at integer positions.
        cu = np.clip((u / self.pad_size[0] + 0.5) * self.cols - 0.5, 0, self.cols - 1)
        cv = np.clip((v / self.pad_size[1] + 0.5) * self.rows - 0.5, 0, self.rows - 1)
        c0, r0 = int(np.floor(cu)), int(np.floor(cv))
        c1, r1 = min(c0 + 1, self.cols - 1), min(r0 + 1, self.rows - 1)
        fu, fv = cu - c0, cv - r0
        grid[r0, c0] += (1 - fu) * (1 - fv) * force
        grid[r0, c1] += fu * (1 - fv) * force
        grid[r1, c0] += (1 - fu) * fv * force
        grid[r1, c1] += fu * fv * force
