"""Calibration: camera intrinsics, hand-eye and latencies, written under ``calibration/``."""
