"""Taxel boards that stream over a (USB) serial port: magnetometer skins, taxel arrays.

Such boards send fixed-layout binary frames as fast as they sample. This reads them from the
tty (raw mode, any baud rate termios knows) and checks each frame before it becomes a grid; a
frame that fails is counted and skipped, and the reader finds the next one by its sync bytes,
so a glitch on the cable costs one frame, never the stream.

Frame (little-endian), the format of this project's reference firmware and easy to emit from
any microcontroller:

    0xA5 0x5A | rows u8 | cols u8 | seq u32 | device_time_us u32 | rows*cols*3 x int16 (mN) | crc16

``crc16`` is CRC-16/CCITT-FALSE over everything after the sync bytes. Each taxel's three values
are the force in the pad frame (x along the finger's width, y along its length, z the normal
push), in millinewtons, as the sim's pads publish them in newtons. A jump in ``seq`` counts the
frames the board sent that never arrived.
"""

from __future__ import annotations

import os
import struct
import termios
import tty
from dataclasses import dataclass

import numpy as np

SYNC = b"\xa5\x5a"
HEADER = struct.Struct("<BBII")  # rows, cols, seq, device_time_us
MAX_TAXELS = 1024


def crc16_ccitt(data: bytes, crc: int = 0xFFFF) -> int:
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def encode_frame(grid_n: np.ndarray, seq: int, device_time_us: int = 0) -> bytes:
    """The bytes a board sends for ``grid_n`` (rows, cols, 3) newtons (firmware and tests)."""
    rows, cols, _ = grid_n.shape
    values = np.clip(np.round(np.asarray(grid_n, float) * 1000.0), -32768, 32767).astype("<i2")
    body = HEADER.pack(rows, cols, seq & 0xFFFFFFFF, device_time_us & 0xFFFFFFFF) + values.tobytes()
    return SYNC + body + struct.pack("<H", crc16_ccitt(body))


@dataclass
class TaxelFrame:
    seq: int
    device_time_us: int
    taxels: np.ndarray  # (rows, cols, 3) float32 newtons


class TaxelFrameParser:
    """Bytes in, checked frames out. ``bad``: frames dropped for a wrong CRC or a layout other
    than ``rows`` x ``cols``; ``lost``: frames the sequence numbers say never arrived."""

    def __init__(self, rows: int, cols: int):
        self.rows, self.cols = rows, cols
        self.buf = bytearray()
        self.frames = self.bad = self.lost = self.skipped_bytes = 0
        self._last_seq: int | None = None

    def feed(self, data: bytes) -> list[TaxelFrame]:
        self.buf += data
        out = []
        while True:
            start = self.buf.find(SYNC)
            if start < 0:
                keep = 1 if self.buf.endswith(SYNC[:1]) else 0
                self.skipped_bytes += len(self.buf) - keep
                del self.buf[: len(self.buf) - keep]
                return out
            if start:
                self.skipped_bytes += start
                del self.buf[:start]
            if len(self.buf) < 2 + HEADER.size:
                return out
            rows, cols, seq, t_us = HEADER.unpack_from(self.buf, 2)
            n = rows * cols * 3
            if rows * cols > MAX_TAXELS or rows == 0 or cols == 0:
                self._drop(1)   # not a header: look for the next sync
                continue
            size = 2 + HEADER.size + 2 * n + 2
            if len(self.buf) < size:
                return out
            body = bytes(self.buf[2: size - 2])
            (crc,) = struct.unpack_from("<H", self.buf, size - 2)
            if crc != crc16_ccitt(body) or (rows, cols) != (self.rows, self.cols):
                self._drop(1)   # a corrupt frame; its bytes may hide the next sync
                continue
            del self.buf[:size]
            if self._last_seq is not None:
                gap = (seq - self._last_seq - 1) & 0xFFFFFFFF
                self.lost += gap if gap < 1 << 31 else 0  # a board restart (seq back to 0) is no loss
            self._last_seq = seq
            grid = np.frombuffer(body, "<i2", n, HEADER.size).reshape(rows, cols, 3).astype(np.float32) / 1000.0
            self.frames += 1
            out.append(TaxelFrame(seq, t_us, grid))

    def _drop(self, n: int) -> None:
        self.bad += 1
        self.skipped_bytes += n
        del self.buf[:n]


BAUD = {b: getattr(termios, f"B{b}") for b in (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600,
                                                1000000, 2000000) if hasattr(termios, f"B{b}")}


def open_serial(path: str, baud: int = 921600) -> int:
    """A tty opened raw (no echo, no line editing, 8N1) at ``baud``; returns the descriptor."""
    if baud not in BAUD:
        raise ValueError(f"baud rate {baud} is not one of {', '.join(map(str, BAUD))}")
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[4] = attrs[5] = BAUD[baud]
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except termios.error:
        os.close(fd)
        raise
    return fd
