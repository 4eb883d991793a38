"""Cameras rendered off the physics thread, one render thread per camera: every capture
becomes one frame per camera, in order, showing the world as it was at the capture."""

import threading

import numpy as np
import pytest

from robot_learning.sim.render import AsyncCameras, CameraSpec
from robot_learning.sim.workcell import Workcell


@pytest.fixture(scope="module")
def cell():
    c = Workcell("pick_place")
    yield c
    c.close()


def test_each_frame_shows_the_world_at_its_capture(cell):
    cell.reset(4)
    specs = [CameraSpec("front", 320, 240, (0.07, 3.0)), CameraSpec("wrist", 160, 120, None)]
    got: dict[str, list] = {"front": [], "wrist": []}
    lock = threading.Lock()

    def on_frame(name, stamp, rgb, depth_mm):
        with lock:  # rgb is a view of a buffer that is drawn into again: copy it, as a publisher does
            got[name].append((stamp, rgb.copy(), None if depth_mm is None else depth_mm.copy()))

    cams = AsyncCameras(cell.model, specs, on_frame)
    expected = []
    try:
        for k in range(6):
            # move the arm between captures, so that frames from a wrong instant differ
            cell.controller.command_twist(np.array([0.0, 0.15, -0.1, 0.0, 0.0, 0.5]), cell.time)
            cell.advance(0.1)
            cams.capture(cell.data, float(k))
            expected.append({s.name: cell.render(s.name, s.width, s.height, depth=s.depth_range is not None)
                             for s in specs})
    finally:
        cams.close()
    assert cams.error is None
    for spec in specs:
        frames = got[spec.name]
        assert [f[0] for f in frames] == [float(k) for k in range(6)]  # one per capture, in order
        for k, (_, rgb, depth) in enumerate(frames):
            ref = expected[k][spec.name]
            assert rgb.shape == (spec.height, spec.width, 3)
            assert np.array_equal(rgb, ref.rgb), f"{spec.name} frame {k} is not the world at its capture"
            if spec.depth_range is None:
                assert depth is None
            else:
                assert ((ref.depth_mm > 0) == (depth > 0)).mean() > 0.99  # same pixels in range
                valid = (ref.depth_mm > 0) & (depth > 0)
                err = np.abs(depth[valid].astype(int) - ref.depth_mm[valid])
                # the two conversions round differently; only pixels on a depth edge may flip
                assert np.percentile(err, 99.5) <= 2, f"depth off by {np.percentile(err, 99.5)} mm"
    # the arm moved: consecutive frames differ
    assert not np.array_equal(got["wrist"][0][1], got["wrist"][-1][1])


def test_a_camera_missing_from_the_model_is_named(cell):
    with pytest.raises(ValueError, match="'nope' is not in the model"):
        AsyncCameras(cell.model, [CameraSpec("nope", 64, 48, None)], lambda *a: None)
