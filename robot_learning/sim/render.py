"""Camera rendering off the physics thread.

The physics loop only snapshots the scene at the capture instant (``mjv_updateScene``, a
copy of geom poses: well under a millisecond); a render thread with its own GL context
draws each snapshot and reads colour and depth from the same pass. MuJoCo releases the GIL
while it renders, so on a multi-core machine physics and rendering overlap, and each frame
still shows the world exactly at its stamp.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import mujoco
import numpy as np


@dataclass
class CameraSpec:
    name: str
    width: int
    height: int
    depth_range: tuple[float, float] | None  # metres; None: colour only


def depth_to_mm(buffer: np.ndarray, model: mujoco.MjModel, depth_range: tuple[float, float]) -> np.ndarray:
    """OpenGL depth buffer (0..1, non-linear) to metric depth in mm, 0 outside the sensor's range.

    Computed in place on one float32 temporary: this runs for every frame of every camera."""
    extent = model.stat.extent
    near, far = model.vis.map.znear * extent, model.vis.map.zfar * extent
    d = np.multiply(buffer, np.float32(near / far - 1.0), dtype=np.float32)
    d += np.float32(1.0)
    np.divide(np.float32(near * 1000.0), d, out=d)
    d[(d < depth_range[0] * 1000.0) | (d > depth_range[1] * 1000.0)] = 0
    return d.astype(np.uint16)


class AsyncCameras:
    """Frames rendered off the physics thread and handed to ``on_frame(name, stamp, rgb, depth_mm)``.

    Two stages, each on its own thread: one draws and reads back each snapshot; the other
    turns the read-back into depth in mm and calls ``on_frame`` (a publisher), while the next
    frame is already being drawn. ``rgb`` is an upright view of a read-back buffer, valid only
    during the call: a consumer copies it once, where it needs it (into a message).

    Up to ``pending`` captures per camera are in flight; ``capture`` waits for the oldest to
    finish when that many are queued, so every frame is rendered (the camera rate holds in
    simulated time) and physics slows down only when rendering is the bottleneck."""

    def __init__(self, model: mujoco.MjModel, cameras: list[CameraSpec],
                 on_frame: Callable[[str, float, np.ndarray, np.ndarray | None], None], pending: int = 2):
        self.model, self.cameras, self.on_frame = model, cameras, on_frame
        self.opt = mujoco.MjvOption()
        self.cam_ids = {c.name: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, c.name) for c in cameras}
        for name, i in self.cam_ids.items():
            if i < 0:
                raise ValueError(f"camera '{name}' is not in the model")
        self.free: queue.Queue = queue.Queue()
        for _ in range(pending * len(cameras)):
            self.free.put(mujoco.MjvScene(model, maxgeom=10_000))
        # read-back buffers, two per camera: one being drawn into while the other is published
        self.buffers: dict[str, queue.Queue] = {}
        for c in cameras:
            self.buffers[c.name] = queue.Queue()
            for _ in range(2):
                self.buffers[c.name].put((np.empty((c.height, c.width, 3), np.uint8),
                                          np.empty((c.height, c.width), np.float32)))
        self.todo: queue.Queue = queue.Queue()
        self.drawn: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="camera-render")
        self.post = threading.Thread(target=self._post, daemon=True, name="camera-publish")
        self.thread.start()
        self.post.start()
        self._ready.wait(30.0)
        if self.error is not None:
            raise RuntimeError(f"camera renderer failed to start: {self.error}") from self.error

    def capture(self, data: mujoco.MjData, stamp: float) -> None:
        """Snapshot every camera's view of ``data`` now (called from the physics thread)."""
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        batch = []
        for spec in self.cameras:
            try:
                scene = self.free.get(timeout=10.0)
            except queue.Empty:
                raise RuntimeError(f"camera rendering stalled ({self.error or 'no frame for 10 s'})") from None
            cam.fixedcamid = self.cam_ids[spec.name]
            mujoco.mjv_updateScene(self.model, data, self.opt, None, cam, mujoco.mjtCatBit.mjCAT_ALL, scene)
            batch.append((spec, scene))
        self.todo.put((stamp, batch))

    def _run(self) -> None:
        try:
            w = max(c.width for c in self.cameras)
            h = max(c.height for c in self.cameras)
            gl = mujoco.GLContext(w, h)
            gl.make_current()
            ctx = mujoco.MjrContext(self.model, mujoco.mjtFontScale.mjFONTSCALE_150)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, ctx)
        except BaseException as e:  # noqa: BLE001 - reported to the constructor
            self.error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                item = self.todo.get()
                if item is None:
                    break
                stamp, batch = item
                for spec, scene in batch:
                    rgb, depth = self.buffers[spec.name].get()
                    rect = mujoco.MjrRect(0, 0, spec.width, spec.height)
                    mujoco.mjr_render(rect, scene, ctx)
                    mujoco.mjr_readPixels(rgb, depth if spec.depth_range else None, rect, ctx)
                    self.free.put(scene)
                    self.drawn.put((spec, stamp, rgb, depth))
        except BaseException as e:  # noqa: BLE001 - surfaced by the owner through .error
            self.error = e
        finally:
            self.drawn.put(None)
            ctx.free()
            gl.free()

    def _post(self) -> None:
        while True:
            item = self.drawn.get()
            if item is None:
                break
            spec, stamp, rgb, depth = item
            try:
                # OpenGL reads bottom row first: flipped views, copied upright by the consumer
                depth_mm = depth_to_mm(depth[::-1], self.model, spec.depth_range) if spec.depth_range else None
                self.on_frame(spec.name, stamp, rgb[::-1], depth_mm)
            except BaseException as e:  # noqa: BLE001 - surfaced by the owner through .error
                self.error = e
            finally:
                self.buffers[spec.name].put((rgb, depth))

    def close(self) -> None:
        self.todo.put(None)
        self.thread.join(timeout=10.0)
        self.post.join(timeout=10.0)
