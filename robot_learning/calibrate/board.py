"""The ChArUco board that calibration looks at: its definition, detection in a frame, and the
same board as a textured plate in the MuJoCo workcell, where its true pose is known.

The board's frame is OpenCV's: origin at the outer corner of the first square (the top left
of the printed image), x along the rows to the right, y down the columns, z into the board.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from robot_learning.config import ConfigError, load_yaml

PX_PER_SQUARE = 120  # texture resolution: sharp at the distances a camera sees the board from


@dataclass(frozen=True)
class Board:
    squares_x: int = 7
    squares_y: int = 5
    square_m: float = 0.04
    marker_m: float = 0.03
    dictionary: str = "DICT_5X5_100"

    @classmethod
    def load(cls, path: str | Path = "calibration/charuco.yaml") -> Board:
        d = load_yaml(path)
        try:
            b = cls(int(d["squares_x"]), int(d["squares_y"]), float(d["square_m"]), float(d["marker_m"]),
                    str(d.get("dictionary", "DICT_5X5_100")))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{d['_source']}: a ChArUco board needs squares_x, squares_y, square_m, marker_m "
                              f"(and dictionary): {e!r}") from None
        if not 0 < b.marker_m < b.square_m:
            raise ConfigError(f"{d['_source']}: marker_m must be smaller than square_m")
        if not hasattr(cv2.aruco, b.dictionary):
            raise ConfigError(f"{d['_source']}: unknown ArUco dictionary '{b.dictionary}' (e.g. DICT_5X5_100)")
        return b

    @property
    def size_m(self) -> tuple[float, float]:
        """Width and height of the squares' area."""
        return self.squares_x * self.square_m, self.squares_y * self.square_m

    def cv(self) -> cv2.aruco.CharucoBoard:
        d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_m, self.marker_m, d)

    def image(self, px_per_square: int = PX_PER_SQUARE, margin_squares: float = 0.5) -> np.ndarray:
        """The printable board (grey, uint8) with a white margin of ``margin_squares``."""
        m = int(round(margin_squares * px_per_square))
        w, h = self.squares_x * px_per_square, self.squares_y * px_per_square
        return self.cv().generateImage((w + 2 * m, h + 2 * m), marginSize=m)

    def corners(self) -> np.ndarray:
        """Every inner corner in the board's frame, [N, 3] metres, in OpenCV's id order."""
        return np.asarray(self.cv().getChessboardCorners(), np.float64).reshape(-1, 3)


@dataclass
class Detection:
    ids: np.ndarray          # [N] inner-corner ids
    image_points: np.ndarray  # [N, 2] pixels
    object_points: np.ndarray  # [N, 3] metres, board frame


def detect(board: Board, frame: np.ndarray, min_corners: int = 6) -> Detection | None:
    """The board's inner corners in a frame (RGB or grey), to sub-pixel; None when fewer than
    ``min_corners`` are seen (too few to constrain a pose)."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    corners, ids, _, _ = cv2.aruco.CharucoDetector(board.cv()).detectBoard(grey)
    if ids is None or len(ids) < min_corners:
        return None
    ids = ids.reshape(-1)
    return Detection(ids, corners.reshape(-1, 2).astype(np.float64), board.corners()[ids])


# ---- the board in the sim ------------------------------------------------------------------
def cached_png(name: str, make, cache: Path | None = None) -> Path:
    """``make()``'s image as a PNG MuJoCo can load, under runs/.cache (written once per name)."""
    from robot_learning.paths import project_root

    cache = cache or project_root() / "runs" / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / name
    if not path.exists():
        tmp = path.with_suffix(".partial.png")
        cv2.imwrite(str(tmp), make())
        tmp.replace(path)
    return path


def texture_file(board: Board, cache: Path | None = None) -> Path:
    """The board's image as a PNG MuJoCo can load (written once per board)."""
    name = f"charuco_{board.squares_x}x{board.squares_y}_{board.square_m:g}_{board.marker_m:g}_{board.dictionary}.png"
    return cached_png(name, board.image, cache)


def board_mjcf(board: Board, name: str = "charuco", mocap: bool = True, pos=(0.5, 0.0, 0.3),
               quat=(1.0, 0.0, 0.0, 0.0)) -> tuple[str, str]:
    """(asset XML, body XML) of a thin plate showing the board on its +z face, a mocap body
    (placed by calibration routines) unless ``mocap`` is False. The plate's frame is the
    board's centre; ``board_pose_in_body`` gives the board's frame in it."""
    half = np.array(board.size_m) / 2 + 0.5 * board.square_m  # the white margin: half a square
    asset = (f'<texture name="{name}" type="2d" file="{texture_file(board)}"/>'
             f'<material name="{name}" texture="{name}" texrepeat="1 1" texuniform="false" specular="0" '
             f'shininess="0"/>')
    mocap_attr = ' mocap="true"' if mocap else ""
    body = (f'<body name="{name}" pos="{pos[0]:.6g} {pos[1]:.6g} {pos[2]:.6g}" '
            f'quat="{" ".join(f"{q:.6g}" for q in quat)}"{mocap_attr}>'
            f'<geom type="plane" size="{half[0]:.6g} {half[1]:.6g} 0.001" material="{name}" '
            f'contype="0" conaffinity="0" group="1"/></body>')
    return asset, body


def board_pose_in_body(board: Board) -> tuple[np.ndarray, np.ndarray]:
    """(rotation 3x3, translation) of the board's frame in the plate body's frame: the texture's
    top-left is the body's (-x, +y) corner, so x stays, y and z flip."""
    w, h = board.size_m
    return np.diag([1.0, -1.0, -1.0]), np.array([-w / 2, h / 2, 0.0])
