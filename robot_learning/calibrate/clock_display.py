"""A clock shown to a camera, to measure the camera's capture-to-stamp latency (UMI measures
its cameras the same way, with a phone showing its clock as a QR code).

The display shows the time at which it was drawn, in milliseconds, as a row of black and white
cells framed by four ArUco markers. In a frame of the camera, the markers give where each cell
lies (a homography), the cells give the time shown, and the frame's stamp minus the time shown
is how late the stamp is: the camera's latency from capture to stamp, plus however long the
display had been showing that time when the frame was taken (up to one refresh of the display;
``latency_from_frames`` takes it off). The display and the stamps must run on the same clock:
on a robot, a screen driven by the PC that stamps the frames; in the sim, the sim's clock.

Layout, in cells of the display (``WIDTH`` x ``HEIGHT``, origin top left, v down): markers of
2 x 2 cells in the corners; between them, a white row away from the markers (their quiet zone),
a band of two rows: at each end two reference columns
(black over white, then white over black) and in the middle ``BITS`` code cells, 8 per row,
holding the time in Gray code (one cell changes per millisecond, so a frame that catches the
display mid-update reads one of the two times, not a mix of both).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

WIDTH, HEIGHT = 12, 8        # cells
MARGIN = 0.5                 # white cells around everything: the markers need a quiet zone
BITS = 16                    # the time modulo 2^16 ms (65.5 s): far more than any latency
WRAP_MS = 1 << BITS
DICTIONARY = "DICT_4X4_50"
MARKER_IDS = (0, 1, 2, 3)    # top left, top right, bottom left, bottom right
# top-left corner of each marker, in cells
MARKER_AT = {0: (0.0, 0.0), 1: (WIDTH - 2.0, 0.0), 2: (0.0, HEIGHT - 2.0), 3: (WIDTH - 2.0, HEIGHT - 2.0)}
MARKER_CELLS = 2.0
BAND_ROW = 3                 # the band's first row: a white row between it and the markers


def _band_cells() -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """(code cells, black references, white references) as (column, row) in the band's two rows."""
    code = [(2 + i % 8, BAND_ROW + i // 8) for i in range(BITS)]
    black = [(0, BAND_ROW), (1, BAND_ROW + 1), (WIDTH - 2, BAND_ROW), (WIDTH - 1, BAND_ROW + 1)]
    white = [(0, BAND_ROW + 1), (1, BAND_ROW), (WIDTH - 2, BAND_ROW + 1), (WIDTH - 1, BAND_ROW)]
    return code, black, white


CODE_CELLS, BLACK_CELLS, WHITE_CELLS = _band_cells()


def gray_bits(t: float) -> np.ndarray:
    """The cells' values (True: black) showing time ``t`` (seconds): whole milliseconds modulo
    ``WRAP_MS`` in Gray code, most significant bit first."""
    ms = int(np.floor(t * 1000.0)) % WRAP_MS
    g = ms ^ (ms >> 1)
    return np.array([(g >> (BITS - 1 - i)) & 1 for i in range(BITS)], bool)


def bits_to_ms(bits: np.ndarray) -> int:
    """The milliseconds (modulo ``WRAP_MS``) a set of Gray-code cells shows."""
    g = 0
    for b in bits:
        g = (g << 1) | int(bool(b))
    ms, shift = g, g >> 1
    while shift:
        ms ^= shift
        shift >>= 1
    return ms


@functools.cache
def _dictionary():
    return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, DICTIONARY))


@functools.cache
def _detector() -> cv2.aruco.ArucoDetector:
    return cv2.aruco.ArucoDetector(_dictionary())


def _fill(img: np.ndarray, cells, value: int, px_per_cell: int) -> None:
    m = int(round(MARGIN * px_per_cell))
    for c, r in cells:
        img[m + r * px_per_cell:m + (r + 1) * px_per_cell, m + c * px_per_cell:m + (c + 1) * px_per_cell] = value


@functools.cache
def _static_pattern(px_per_cell: int) -> np.ndarray:
    """Markers, margin and reference cells: what every redraw shares."""
    m = int(round(MARGIN * px_per_cell))
    img = np.full((HEIGHT * px_per_cell + 2 * m, WIDTH * px_per_cell + 2 * m), 255, np.uint8)
    side = int(MARKER_CELLS * px_per_cell)
    for mid in MARKER_IDS:
        u, v = MARKER_AT[mid]
        x, y = m + int(u * px_per_cell), m + int(v * px_per_cell)
        img[y:y + side, x:x + side] = cv2.aruco.generateImageMarker(_dictionary(), mid, side)
    _fill(img, BLACK_CELLS, 0, px_per_cell)
    img.flags.writeable = False
    return img


def pattern_image(t: float | None, px_per_cell: int = 60) -> np.ndarray:
    """The display as a grey image (uint8), showing time ``t``; ``None``: the code cells left
    white (the sim draws them as separate geoms over this texture)."""
    img = _static_pattern(px_per_cell).copy()
    if t is not None:
        _fill(img, [cell for cell, b in zip(CODE_CELLS, gray_bits(t)) if b], 0, px_per_cell)
    return img


def _marker_corners_cells(mid: int) -> np.ndarray:
    """A marker's four corners in display cells (ArUco's order: clockwise from top left)."""
    u, v = MARKER_AT[mid]
    s = MARKER_CELLS
    return np.array([[u, v], [u + s, v], [u + s, v + s], [u, v + s]], np.float64)


def read_display(frame: np.ndarray) -> int | None:
    """The milliseconds (modulo ``WRAP_MS``) the display shows in ``frame`` (RGB or grey), or
    None when it is not seen well enough to read: fewer than three of its markers found, or
    black and white not told apart."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    corners, ids, _ = _detector().detectMarkers(grey)
    if ids is None:
        return None
    src, dst = [], []
    for c, i in zip(corners, ids.reshape(-1)):
        if int(i) in MARKER_IDS:
            src.append(_marker_corners_cells(int(i)))
            dst.append(c.reshape(4, 2))
    if len(src) < 3:
        return None
    h, _ = cv2.findHomography(np.concatenate(src), np.concatenate(dst))
    if h is None:
        return None

    def sample(cells) -> np.ndarray:
        centres = np.array([[c + 0.5, r + 0.5] for c, r in cells], np.float64).reshape(-1, 1, 2)
        px = cv2.perspectiveTransform(centres, h).reshape(-1, 2)
        out = []
        for x, y in px:
            xi, yi = int(round(x)), int(round(y))
            if not (1 <= xi < grey.shape[1] - 1 and 1 <= yi < grey.shape[0] - 1):
                return np.array([])
            out.append(float(grey[yi - 1:yi + 2, xi - 1:xi + 2].mean()))
        return np.array(out)

    black, white, code = sample(BLACK_CELLS), sample(WHITE_CELLS), sample(CODE_CELLS)
    if not (len(black) and len(white) and len(code)) or white.min() - black.max() < 20:
        return None
    return bits_to_ms(code < (black.mean() + white.mean()) / 2)


@dataclass
class CaptureLatency:
    latency_s: float      # the estimate: the median lateness less half a display refresh
    median_s: float       # median of stamp - time shown
    spread_s: float       # 5th to 95th percentile of stamp - time shown
    frames: int           # frames read
    unread: int           # frames in which the display could not be read


def lateness_ms(stamp: float, shown_ms: int) -> float:
    """How many ms ``stamp`` (seconds) lies after the time shown, taking the display's wrap
    into account (a result beyond half the wrap is read as a stamp before the display)."""
    d = (stamp * 1000.0 - shown_ms) % WRAP_MS
    return d - WRAP_MS if d >= WRAP_MS / 2 else d


def latency_from_frames(stamps: list[float], shown: list[int | None], display_period: float) -> CaptureLatency:
    """The capture-to-stamp latency from frames' stamps and what the display showed in each.

    A display drawn every ``display_period`` seconds shows, at the capture instant, the time of
    its last refresh: on average half a period earlier. Frames land anywhere in the period, so
    the median lateness less half the period is the camera's latency (0 for a display redrawn
    at every capture, as the sim's is)."""
    # the display shows whole milliseconds: the time it shows lies half a millisecond later on average
    read = [lateness_ms(t, s) - 0.5 for t, s in zip(stamps, shown) if s is not None]
    unread = sum(s is None for s in shown)
    if not read:
        raise ValueError(f"the display was not read in any of {len(shown)} frames: is it in view, in focus, lit?")
    d = np.array(read) / 1000.0
    med = float(np.median(d))
    return CaptureLatency(med - display_period / 2, med, float(np.percentile(d, 95) - np.percentile(d, 5)),
                          len(read), unread)
