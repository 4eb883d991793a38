"""Tactile drivers, checked on content: a visuotactile gel whose markers move by a known field,
and a serial taxel board on a real pty pair with corrupted, truncated and missing frames."""

from __future__ import annotations

import os
import threading

import cv2
import numpy as np
import pytest

from robot_learning.devices.taxel_serial import TaxelFrameParser, encode_frame, open_serial
from robot_learning.devices.visuotactile import Visuotactile, VisuotactileConfig

H, W, PITCH = 240, 320, 20  # a 16 x 12 marker grid


def gel_image(field=lambda x, y: (0.0, 0.0), press: tuple[int, int, int] | None = None) -> np.ndarray:
    """A bright gel with dark markers drawn at sub-pixel positions moved by ``field`` (pixels);
    ``press``: (x, y, radius) of a brighter pressed disc."""
    scale = 8
    big = np.full((H * scale, W * scale), 200, np.uint8)
    if press is not None:
        cv2.circle(big, (press[0] * scale, press[1] * scale), press[2] * scale, 240, -1)
    for y0 in np.arange(PITCH / 2, H, PITCH):
        for x0 in np.arange(PITCH / 2, W, PITCH):
            dx, dy = field(x0, y0)
            cv2.circle(big, (int(round((x0 + dx) * scale)), int(round((y0 + dy) * scale))), 3 * scale, 20, -1)
    img = cv2.resize(big, (W, H), interpolation=cv2.INTER_AREA)
    return np.repeat(img[:, :, None], 3, axis=2)


def test_recovered_shear_matches_a_known_displacement_field():
    cfg = VisuotactileConfig(rows=3, cols=4, shear_n_per_px=0.1)
    vt = Visuotactile(cfg)
    assert vt.set_reference(gel_image()) == (H // PITCH) * (W // PITCH)

    def field(x, y):  # a twist about the centre plus a drift: each cell's mean is known
        cx, cy, a = W / 2, H / 2, 0.02
        return 1.5 - a * (y - cy), -0.75 + a * (x - cx)

    r = vt.process(gel_image(field))
    ok = np.isfinite(r.displacement[:, 0])
    assert ok.all()
    truth = np.array([field(x, y) for x, y in r.markers])
    assert np.abs(r.displacement - truth).max() < 0.15          # every marker, sub-pixel
    col = (r.markers[:, 0] / W * cfg.cols).astype(int)
    row = (r.markers[:, 1] / H * cfg.rows).astype(int)
    for rr in range(cfg.rows):
        for cc in range(cfg.cols):
            want = truth[(row == rr) & (col == cc)].mean(0) * cfg.shear_n_per_px
            assert np.allclose(r.taxels[rr, cc, :2], want, atol=0.015), (rr, cc)
    assert r.taxels.dtype == np.float32 and r.taxels.shape == (3, 4, 3)


def test_contact_mask_and_normal_follow_the_pressed_region():
    vt = Visuotactile(VisuotactileConfig(rows=2, cols=2))
    vt.set_reference(gel_image())
    untouched = vt.process(gel_image())
    assert untouched.contact.max() == 0 and np.allclose(untouched.taxels, 0.0) and np.allclose(untouched.wrench, 0)
    r = vt.process(gel_image(press=(80, 60, 40)))                # top-left quadrant
    assert r.contact[60, 80] == 255 and r.contact[180, 240] == 0
    assert r.taxels[0, 0, 2] > 0 and r.taxels[1, 1, 2] == 0.0
    assert r.wrench[2] == pytest.approx(r.taxels[:, :, 2].sum(), rel=1e-6)


def test_serial_frames_parse_and_bad_frames_are_counted_and_skipped():
    """A real pty pair: the board's side writes good frames, a frame with a flipped byte, line
    noise, a frame of the wrong layout, a gap in the sequence, and a frame split across writes."""
    master, slave = os.openpty()
    fd = open_serial(os.ttyname(slave), 921600)
    rng = np.random.default_rng(0)
    grids = [rng.uniform(-2, 2, (4, 4, 3)).round(3) for _ in range(6)]
    frames = [encode_frame(g, seq) for seq, g in enumerate(grids)]
    corrupt = bytearray(frames[2])
    corrupt[20] ^= 0x40
    stream = (frames[0] + b"\x00\xa5\x13noise" + frames[1] + bytes(corrupt) + encode_frame(np.zeros((2, 2, 3)), 3)
              + frames[4][:17])
    tail = frames[4][17:] + frames[5]     # frame 3 never sent: the sequence says one was lost

    def board():
        os.write(master, stream)
        os.write(master, tail)

    t = threading.Thread(target=board)
    t.start()
    parser, got = TaxelFrameParser(4, 4), []
    while len(got) < 4:
        got += parser.feed(os.read(fd, 4096))
    t.join()
    os.close(fd)
    os.close(slave)
    os.close(master)
    assert [f.seq for f in got] == [0, 1, 4, 5]
    for f in got:
        assert np.allclose(f.taxels, grids[f.seq], atol=5e-4) and f.taxels.dtype == np.float32
    assert parser.bad >= 2 and parser.lost == 2 and parser.frames == 4   # seq 2 (corrupt) and 3 (2x2) lost
