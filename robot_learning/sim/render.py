"""Camera rendering off the physics thread.

The physics loop only snapshots the scene at the capture instant (``mjv_updateScene``, a
copy of geom poses: well under a millisecond); each camera's render thread, with its own GL
context, draws its snapshots and reads colour and depth from the same pass. MuJoCo releases
the GIL while it renders, so physics and the cameras overlap on a multi-core machine, and
each frame still shows the world exactly at its stamp.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import mujoco
import numpy as np

# A camera with no frame for this long has hung. Long enough for a process that was paused
# (a debugger, or SIGSTOP: `make bench` pauses the sim node while it measures bare MuJoCo) to
# resume cleanly.
STALL_S = 30.0


@dataclass
class CameraSpec:
    name: str
    width: int
    height: int
    depth_range: tuple[float, float] | None  # metres; None: colour only


def camera_specs(calib, names: list[str], depth: bool = True) -> list[CameraSpec]:
    """Specs of calibrated cameras (``config`` calibration's ``cameras``), as the sim node renders them."""
    cal = calib.cameras
    return [CameraSpec(n, cal[n].width, cal[n].height, tuple(cal[n].depth_range) if depth else None) for n in names]


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


class _Lane:
    """One camera's share of the pipeline: its scene snapshots, its read-back buffers and the
    queue its render thread (with its own GL context) draws from."""

    def __init__(self, model: mujoco.MjModel, spec: CameraSpec, pending: int):
        self.spec = spec
        self.cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, spec.name)
        if self.cam_id < 0:
            raise ValueError(f"camera '{spec.name}' is not in the model")
        self.free: queue.Queue = queue.Queue()
        for _ in range(pending):
            self.free.put(mujoco.MjvScene(model, maxgeom=10_000))
        # read-back buffers, two: one being drawn into while the other is published
        self.buffers: queue.Queue = queue.Queue()
        for _ in range(2):
            self.buffers.put((np.empty((spec.height, spec.width, 3), np.uint8),
                              np.empty((spec.height, spec.width), np.float32)))
        self.todo: queue.Queue = queue.Queue()


class AsyncCameras:
    """Frames rendered off the physics thread and handed to ``on_frame(name, stamp, rgb, depth_mm)``.

    Every camera has its own render thread and GL context, so the cameras draw in parallel
    (a camera is its own device on a robot too): with llvmpipe on two cores this is 10-20%
    faster than one thread drawing them in turn, because one camera's scene upload and
    read-back overlap with the other's rasterization. One more thread turns each read-back
    into depth in mm and calls ``on_frame`` (a publisher) while the next frames are drawn.
    ``rgb`` is an upright view of a read-back buffer, valid only during the call: a consumer
    copies it once, where it needs it (into a message). A camera's frames reach ``on_frame``
    in capture order.

    Up to ``pending`` captures per camera are in flight; ``capture`` waits for the oldest to
    finish when that many are queued, so every frame is rendered (the camera rate holds in
    simulated time) and physics slows down only when rendering is the bottleneck."""

    def __init__(self, model: mujoco.MjModel, cameras: list[CameraSpec],
                 on_frame: Callable[[str, float, np.ndarray, np.ndarray | None], None], pending: int = 2):
        self.model, self.on_frame = model, on_frame
        self.opt = mujoco.MjvOption()
        self.lanes = [_Lane(model, c, pending) for c in cameras]
        self.drawn: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        started = threading.Barrier(len(self.lanes) + 1)
        self.threads = [threading.Thread(target=self._run, args=(lane, started), daemon=True,
                                         name=f"render-{lane.spec.name}") for lane in self.lanes]
        for t in self.threads:
            t.start()
        self.post = threading.Thread(target=self._post, daemon=True, name="camera-publish")
        self.post.start()
        try:
            started.wait(30.0)
        except threading.BrokenBarrierError:
            pass
        if self.error is not None or started.broken:
            self.close()
            raise RuntimeError(f"camera renderer failed to start: {self.error or 'no GL context in 30 s'}") \
                from self.error

    def capture(self, data: mujoco.MjData, stamp: float) -> None:
        """Snapshot every camera's view of ``data`` now (called from the physics thread)."""
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        for lane in self.lanes:
            try:
                scene = lane.free.get(timeout=STALL_S)
            except queue.Empty:
                raise RuntimeError(f"camera rendering stalled ({self.error or f'no frame for {STALL_S:.0f} s'})") \
                    from None
            cam.fixedcamid = lane.cam_id
            mujoco.mjv_updateScene(self.model, data, self.opt, None, cam, mujoco.mjtCatBit.mjCAT_ALL, scene)
            lane.todo.put((stamp, scene))

    def _run(self, lane: _Lane, started: threading.Barrier) -> None:
        spec = lane.spec
        try:
            gl = mujoco.GLContext(spec.width, spec.height)
            gl.make_current()
            ctx = mujoco.MjrContext(self.model, mujoco.mjtFontScale.mjFONTSCALE_150)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, ctx)
        except BaseException as e:  # noqa: BLE001 - reported to the constructor
            self.error = e
            started.abort()
            self.drawn.put(None)
            return
        try:
            started.wait()
            rect = mujoco.MjrRect(0, 0, spec.width, spec.height)
            while (item := lane.todo.get()) is not None:
                stamp, scene = item
                rgb, depth = lane.buffers.get()
                mujoco.mjr_render(rect, scene, ctx)
                mujoco.mjr_readPixels(rgb, depth if spec.depth_range else None, rect, ctx)
                lane.free.put(scene)
                self.drawn.put((lane, stamp, rgb, depth))
        except BaseException as e:  # noqa: BLE001 - surfaced by the owner through .error
            self.error = e
        finally:
            self.drawn.put(None)
            ctx.free()
            gl.free()

    def _post(self) -> None:
        running = len(self.lanes)
        while running:
            item = self.drawn.get()
            if item is None:  # one render thread has ended
                running -= 1
                continue
            lane, stamp, rgb, depth = item
            spec = lane.spec
            try:
                # OpenGL reads bottom row first: flipped views, copied upright by the consumer
                depth_mm = depth_to_mm(depth[::-1], self.model, spec.depth_range) if spec.depth_range else None
                self.on_frame(spec.name, stamp, rgb[::-1], depth_mm)
            except BaseException as e:  # noqa: BLE001 - surfaced by the owner through .error
                self.error = e
            finally:
                lane.buffers.put((rgb, depth))

    def close(self) -> None:
        """Stop the threads and wait (10 s at most per thread) until they have freed their GL contexts.

        A KeyboardInterrupt meanwhile (a second Ctrl-C) does not cut the wait short: leaving
        with render threads still inside OpenGL made the interpreter abort at exit. It is
        raised again once the threads are gone."""
        for lane in self.lanes:
            lane.todo.put(None)
        interrupted = False
        for t in (*self.threads, self.post):
            while True:
                try:
                    t.join(timeout=10.0)
                    break
                except KeyboardInterrupt:
                    interrupted = True
        if interrupted:
            raise KeyboardInterrupt
