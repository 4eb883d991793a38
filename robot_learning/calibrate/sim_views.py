"""Views of the ChArUco board in the MuJoCo workcell, where the truth is known: the board as a
mocap plate posed in front of a camera (intrinsics), or lying on the table (hand-eye)."""

from __future__ import annotations

from collections.abc import Iterator

import mujoco
import numpy as np

from robot_learning.calibrate.board import Board, board_mjcf, board_pose_in_body, detect
from robot_learning.calibrate.intrinsics import CalibrationError

# MuJoCo's camera frame looks along -z with y up; OpenCV's optical frame along +z with y down
MJ_TO_OPTICAL = np.diag([1.0, -1.0, -1.0])


def camera_optical_pose(cell, camera: str) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) of a camera's optical frame in the world, as the sim has it now."""
    cid = mujoco.mj_name2id(cell.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    return cell.data.cam_xmat[cid].reshape(3, 3) @ MJ_TO_OPTICAL, cell.data.cam_xpos[cid].copy()


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def place_plate(cell, name: str, in_body: tuple[np.ndarray, np.ndarray], r_frame: np.ndarray,
                p_frame: np.ndarray, keep: bool = False) -> None:
    """Put mocap body ``name`` so that the frame it carries at ``in_body`` (rotation,
    translation in the body) is (``r_frame``, ``p_frame``) in the world; ``keep``: there for
    good (resets put mocap bodies back where the model has them)."""
    r_in_body, p_in_body = in_body
    r_body = r_frame @ r_in_body.T
    p_body = p_frame - r_body @ p_in_body
    bid = mujoco.mj_name2id(cell.model, mujoco.mjtObj.mjOBJ_BODY, name)
    mid = cell.model.body_mocapid[bid]
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, r_body.reshape(-1))
    cell.data.mocap_pos[mid], cell.data.mocap_quat[mid] = p_body, q
    if keep:
        cell.model.body_pos[bid], cell.model.body_quat[bid] = p_body, q
    mujoco.mj_forward(cell.model, cell.data)


def place_board(cell, board: Board, r_board: np.ndarray, p_board: np.ndarray, name: str = "charuco") -> None:
    """Put the mocap plate so that the board's frame is (``r_board``, ``p_board``) in the world."""
    place_plate(cell, name, board_pose_in_body(board), r_board, p_board)


def board_in_front_views(camera: str, n: int, seed: int = 0, board: Board | None = None,
                         distance=(0.35, 0.75), tilt_deg: float = 35.0, spread: float = 0.6,
                         ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` frames of the board held in front of ``camera`` at random distances, places and
    tilts (within ``spread`` of the half field of view), as a person shows it to a camera:
    poses where the board is hidden (behind the table, the gripper) are skipped (at most ``5 n``
    tried). Yields (rgb, R, t) with the board's true pose in the camera's optical frame."""
    from robot_learning.sim.workcell import Workcell

    board = board or Board.load()
    cell = Workcell("pick_place", extra=board_mjcf(board))
    try:
        cell.reset(seed)
        rng = np.random.default_rng(seed)
        r_cam, p_cam = camera_optical_pose(cell, camera)
        cam = cell.calib.cameras[camera]
        tan_y = np.tan(np.deg2rad(cam.fovy_deg) / 2)
        tan_x = tan_y * cam.width / cam.height
        w, h = board.size_m
        shown = 0
        for _ in range(5 * n):
            if shown == n:
                break
            d = rng.uniform(*distance)
            # the board's centre somewhere in the view, its frame facing the camera, then tilted
            ray = np.array([rng.uniform(-1, 1) * spread * tan_x, rng.uniform(-1, 1) * spread * tan_y, 1.0])
            tilt = _rot("x", rng.uniform(-tilt_deg, tilt_deg)) @ _rot("y", rng.uniform(-tilt_deg, tilt_deg))
            r_oc = tilt @ _rot("z", rng.uniform(-20, 20))          # board in the optical frame
            center_oc = ray * d
            p_oc = center_oc - r_oc @ np.array([w / 2, h / 2, 0.0])  # its origin corner
            place_board(cell, board, r_cam @ r_oc, p_cam + r_cam @ p_oc)
            rgb = cell.render(camera, depth=False).rgb
            if detect(board, rgb) is not None:
                shown += 1
                yield rgb, r_oc, p_oc
    finally:
        cell.close()


def _move_to(cell, kin, hand: tuple[np.ndarray, np.ndarray], timeout: float = 6.0) -> bool:
    """Stream a TCP pose target through the arm controller (its safety filter, speed limits and
    workspace box) until the arm has come to rest near it (within 1 cm; the views use the pose
    the arm reports, not the target); False when refused or still moving at ``timeout``."""
    from robot_learning.control.safety import CommandRejected
    from robot_learning.transforms import mat_to_quat

    r, p = hand
    tcp = p + r @ np.array([0.0, 0.0, cell.robot.tcp_offset])
    quat = mat_to_quat(r)
    end, still = cell.time + timeout, 0.0
    while cell.time < end:
        try:
            cell.controller.command_pose(tcp, quat, cell.time)
        except CommandRejected:
            return False
        cell.step_control()
        st = cell.backend.read_state()
        still = still + cell.control_dt if np.abs(st.qd).max() < 2e-3 else 0.0
        if still >= 0.3:
            return bool(np.linalg.norm(kin.fk(st.q)[0] - tcp) < 0.01)
    return False


def _presentation_point(r_cam: np.ndarray, p_cam: np.ndarray, intr) -> np.ndarray:
    """Where in the arm's reach (in front of the robot, 0.3-0.5 m above the table) a board
    shows up nearest the middle of a fixed camera's image."""
    best, point = np.inf, None
    for x in np.linspace(0.4, 0.65, 6):
        for z in np.linspace(0.3, 0.5, 5):
            c = r_cam.T @ (np.array([x, 0.0, z]) - p_cam)
            if c[2] <= 0.2:
                continue
            u, v = intr.fx * c[0] / c[2] + intr.cx, intr.fy * c[1] / c[2] + intr.cy
            off = np.hypot(u - intr.cx, v - intr.cy) + 200.0 / c[2]  # centred, and not too close
            if off < best:
                best, point = off, np.array([x, 0.0, z])
    if point is None:
        raise CalibrationError("no point in front of the robot is in this camera's view")
    return point


def hand_eye_views(camera: str, n: int, seed: int = 0, board: Board | None = None,
                   intr=None) -> tuple[list, list, bool, object]:
    """The arm moved through ``orbit_poses`` by its controller, the board seen by ``camera`` at
    each stop: lying on the table for a camera on the hand, held by the hand for a fixed one.
    Returns (hand poses in the base frame from forward kinematics, the board's views
    (``hand_eye.BoardView``), eye_in_hand, the intrinsics used), the views where the board was
    found, ``n`` at most."""
    from robot_learning.calibrate.hand_eye import board_in_camera, orbit_poses
    from robot_learning.control.kinematics import Kinematics
    from robot_learning.devices.camera import Intrinsics
    from robot_learning.sim.workcell import Workcell
    from robot_learning.transforms import quat_to_mat

    board = board or Board.load()
    cell = Workcell("pick_place", extra=board_mjcf(board))
    try:
        cell.reset(seed)
        cam = cell.calib.cameras[camera]
        intr = intr or Intrinsics.from_fovy(cam.width, cam.height, cam.fovy_deg)
        kin = Kinematics(cell.robot)
        eye_in_hand = cam.parent == "hand"
        w, h = board.size_m

        def hand_pose() -> tuple[np.ndarray, np.ndarray]:  # what the robot reports: its kinematics
            pos, quat = kin.fk(cell.backend.read_state().q)
            r = quat_to_mat(quat)
            return r, pos - r @ np.array([0.0, 0.0, cell.robot.tcp_offset])

        start = hand_pose()
        r_cam, p_cam = camera_optical_pose(cell, camera)
        if eye_in_hand:  # the board flat on the table where the optical axis meets it
            axis = r_cam[:, 2]
            center = p_cam + axis * (0.002 - p_cam[2]) / axis[2]
            r_board = np.diag([1.0, -1.0, -1.0])
            place_board(cell, board, r_board, center - r_board @ np.array([w / 2, h / 2, 0.0]))
            held = None
        else:  # held 15 cm from the hand toward the camera, facing it, near the image's centre
            center = _presentation_point(r_cam, p_cam, intr)
            toward = (p_cam - center) / np.linalg.norm(p_cam - center)
            if not _move_to(cell, kin, (start[0], center - 0.15 * toward)):
                raise CalibrationError(f"the arm could not reach {np.round(center - 0.15 * toward, 3).tolist()} "
                                       f"to show the board to {camera}")
            start = hand_pose()
            center = start[1] + 0.15 * toward
            z = -toward
            x = np.cross([0.0, 0.0, 1.0], z)
            x /= np.linalg.norm(x)
            r_board = np.stack([x, np.cross(z, x), z], axis=1)
            p_board = center - r_board @ np.array([w / 2, h / 2, 0.0])
            held = (start[0].T @ r_board, start[0].T @ (p_board - start[1]))  # the board in the hand
        hands, boards = [], []
        for target in orbit_poses(start, center, 4 * n, seed):
            if len(hands) == n:
                break
            if not _move_to(cell, kin, target):
                continue
            hp = hand_pose()
            if held is not None:
                place_board(cell, board, hp[0] @ held[0], hp[0] @ held[1] + hp[1])
            seen = board_in_camera(board, cell.render(camera, depth=False).rgb, intr)
            if seen is not None:
                hands.append(hp)
                boards.append(seen)
        return hands, boards, eye_in_hand, intr
    finally:
        cell.close()


# ---- a clock display in front of a camera (capture-to-stamp latency) ----------------------
CLOCK = "clock_display"


def clock_display_mjcf(cell_m: float = 0.025, name: str = CLOCK) -> tuple[str, str]:
    """(asset XML, body XML) of ``clock_display``'s pattern as a mocap plate: the markers and
    the reference cells a texture, each code cell a thin box just in front of it whose colour
    ``SimClockDisplay.show`` sets (a texture cannot change while the sim runs; a geom's colour
    is read at every capture). The plate's frame is the display's centre, facing +z."""
    from robot_learning.calibrate import clock_display as cd
    from robot_learning.calibrate.board import cached_png

    png = cached_png(f"clock_display_{cd.WIDTH}x{cd.HEIGHT}_{cd.DICTIONARY}.png", lambda: cd.pattern_image(None))
    half = ((cd.WIDTH / 2 + cd.MARGIN) * cell_m, (cd.HEIGHT / 2 + cd.MARGIN) * cell_m)
    asset = (f'<texture name="{name}" type="2d" file="{png}"/>'
             f'<material name="{name}" texture="{name}" texrepeat="1 1" texuniform="false" specular="0" shininess="0"/>'
             f'<material name="{name}_cell" specular="0" shininess="0"/>')
    cells = "".join(
        f'<geom name="{name}_bit{i}" type="box" pos="{(c + 0.5 - cd.WIDTH / 2) * cell_m:.6g} '
        f'{(cd.HEIGHT / 2 - r - 0.5) * cell_m:.6g} 0.001" size="{cell_m / 2:.6g} {cell_m / 2:.6g} 0.0005" '
        f'material="{name}_cell" rgba="1 1 1 1" contype="0" conaffinity="0" group="1"/>'
        for i, (c, r) in enumerate(cd.CODE_CELLS))
    body = (f'<body name="{name}" pos="0 0 -1" mocap="true">'
            f'<geom type="plane" size="{half[0]:.6g} {half[1]:.6g} 0.001" material="{name}" '
            f'contype="0" conaffinity="0" group="1"/>{cells}</body>')
    return asset, body


class SimClockDisplay:
    """``clock_display_mjcf``'s plate in a workcell: placed in front of a camera, showing the
    time it is given (the sim's clock, set before each capture)."""

    def __init__(self, cell, cell_m: float = 0.025, name: str = CLOCK):
        from robot_learning.calibrate import clock_display as cd

        self.cell, self.cell_m, self.name = cell, cell_m, name
        self.geoms = np.array([mujoco.mj_name2id(cell.model, mujoco.mjtObj.mjOBJ_GEOM, f"{name}_bit{i}")
                               for i in range(cd.BITS)])
        if (self.geoms < 0).any():
            raise ValueError(f"the workcell has no '{name}': build it with extra=clock_display_mjcf()")
        self._bits = cd.gray_bits

    def place_in_front_of(self, camera: str, distance: float = 0.5) -> None:
        """Facing ``camera`` (a fixed one) on its optical axis, ``distance`` metres away, for good."""
        from robot_learning.calibrate import clock_display as cd

        r_cam, p_cam = camera_optical_pose(self.cell, camera)
        w, h = cd.WIDTH * self.cell_m, cd.HEIGHT * self.cell_m
        # the display's frame: top-left corner of its cells, x right, y down, z away from the
        # viewer (the camera's optical axes); in the plate's body: x stays, y and z flip
        in_body = (np.diag([1.0, -1.0, -1.0]), np.array([-w / 2, h / 2, 0.0]))
        place_plate(self.cell, self.name, in_body, r_cam, p_cam + r_cam @ np.array([-w / 2, -h / 2, distance]),
                    keep=True)

    def show(self, t: float) -> None:
        rgba = self.cell.model.geom_rgba
        rgba[self.geoms] = np.where(self._bits(t)[:, None], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0])
