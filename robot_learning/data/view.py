"""Looking at an episode: a contact sheet with plots (actions, forces, who was in control,
interventions shaded) or an MP4 of its camera streams at control rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robot_learning.data.schema import SOURCES
from robot_learning.data.store import Episode


def image_streams(ep: Episode) -> list[str]:
    """Camera streams (not taxel grids): 2-D or 3-channel uint8/uint16 frames."""
    out = []
    for name, g in ep.streams.items():
        if "data" in g and g["data"].ndim >= 3 and g["data"].shape[1] >= 32 and g["data"].shape[0] > 0:
            out.append(name)
    return sorted(out, key=lambda n: ("depth" in n, n))


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """Any stored frame as uint8 RGB; depth is colour-mapped (near: bright)."""
    if frame.ndim == 3 and frame.dtype == np.uint8:
        return frame
    f = frame.astype(np.float32)
    valid = f[f > 0]
    lo, hi = (np.percentile(valid, 2), np.percentile(valid, 98)) if valid.size else (0.0, 1.0)
    g = np.clip((hi - f) / max(hi - lo, 1e-6), 0, 1)
    g[f <= 0] = 0
    return (np.stack([g, g ** 0.5, 1 - g], -1) * 255).astype(np.uint8) if f.ndim == 2 else \
        (np.clip(f / max(hi, 1e-6), 0, 1) * 255).astype(np.uint8)


def _frame_at(ep: Episode, stream: str, step: int) -> np.ndarray | None:
    idx = ep.steps["index"][stream][step] if stream in ep.steps["index"] else -1
    return None if idx < 0 else ep.streams[stream]["data"][int(idx)]


def contact_sheet(ep: Episode, out: str | Path, n_frames: int = 6) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    cams = image_streams(ep)
    n = ep.n_steps
    t = ep.steps["t"][:] - (ep.steps["t"][0] if n else 0.0)
    picks = np.linspace(0, max(n - 1, 0), n_frames).astype(int) if n else []
    rows = len(cams)
    fig = plt.figure(figsize=(2.4 * n_frames, 2.0 * rows + 7.5))
    gs = fig.add_gridspec(rows + 3, n_frames, height_ratios=[1.0] * rows + [1.3, 1.1, 0.5])
    for r, cam in enumerate(cams):
        for c, k in enumerate(picks):
            ax = fig.add_subplot(gs[r, c])
            img = _frame_at(ep, cam, k)
            if img is not None:
                ax.imshow(to_rgb(img))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(cam, fontsize=8)
            if r == 0:
                ax.set_title(f"t={t[k]:.1f}s", fontsize=8)
    segs = [(a - ep.steps["t"][0], b - ep.steps["t"][0]) for a, b in ep.meta.get("interventions", [])] if n else []
    act = ep.steps["action"][:]
    ax = fig.add_subplot(gs[rows, :])
    labels = ["vx", "vy", "vz", "wx", "wy", "wz", "gripper"]
    for j in range(act.shape[1]):
        ax.plot(t, act[:, j], label=labels[j] if j < len(labels) else f"a{j}", lw=1)
    ax.set_ylabel("action")
    ax.legend(ncol=7, fontsize=7, loc="upper right")
    ax2 = fig.add_subplot(gs[rows + 1, :], sharex=ax)
    obs = ep.steps["obs"]
    for key, label in (("wrench.data", "wrist |F| (N)"), ("tactile_left.data", "left pad |F| (N)"),
                       ("tactile_right.data", "right pad |F| (N)")):
        if key in obs:
            v = obs[key][:].reshape(n, -1)
            f = np.linalg.norm(v[:, :3], axis=1) if key.startswith("wrench") else \
                np.linalg.norm(v.reshape(n, -1, 3).sum(1), axis=1)
            ax2.plot(t, f, label=label, lw=1)
    ax2.set_ylabel("force")
    ax2.legend(fontsize=7, loc="upper right")
    ax3 = fig.add_subplot(gs[rows + 2, :], sharex=ax)
    src = ep.steps["source"][:]
    colors = {0: "tab:blue", 1: "tab:orange", 2: "tab:gray", -1: "white"}
    for code, col in colors.items():
        m = src == code
        if m.any():
            ax3.scatter(t[m], np.zeros(m.sum()), c=col, marker="s", s=12,
                        label=SOURCES[code] if code >= 0 else "unknown")
    ax3.set_yticks([])
    ax3.set_xlabel("time in episode (s)")
    ax3.legend(ncol=4, fontsize=7, loc="upper right")
    for a in (ax, ax2, ax3):
        for s0, s1 in segs:
            a.axvspan(s0, s1, color="tab:red", alpha=0.15)
    ok = ep.meta.get("success")
    fig.suptitle(f"episode {ep.index}: {ep.meta.get('task', '')}, {n} steps, "
                 f"{'success' if ok else 'failure' if ok is False else 'unlabelled'}; "
                 f"interventions shaded red", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def write_video(frames, out: str | Path, fps: float) -> Path:
    """RGB frames (an iterable of [H, W, 3] uint8) into an MP4."""
    import cv2

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for frame in frames:
            bgr = np.ascontiguousarray(frame[..., ::-1])
            if writer is None:
                writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (bgr.shape[1], bgr.shape[0]))
            writer.write(bgr)
    finally:
        if writer is not None:
            writer.release()
    return out


def video(ep: Episode, out: str | Path, fps: float | None = None) -> Path:
    """Camera streams side by side at control rate, with time and source written on each frame."""
    import cv2

    cams = image_streams(ep)
    if not cams:
        raise ValueError(f"episode {ep.index} has no camera streams to render")
    n = ep.n_steps
    fps = fps or float(ep.meta.get("control_rate", 10.0))
    t0 = ep.steps["t"][0] if n else 0.0
    src = ep.steps["source"][:]
    inter = ep.steps["intervention"][:]
    h = 240

    def frames():
        for k in range(n):
            tiles = []
            for cam in cams:
                f = _frame_at(ep, cam, k)
                shape = ep.streams[cam]["data"].shape
                img = to_rgb(f) if f is not None else np.zeros((shape[1], shape[2], 3), np.uint8)
                tiles.append(cv2.resize(img, (int(img.shape[1] * h / img.shape[0]), h)))
            frame = np.ascontiguousarray(np.concatenate(tiles, axis=1))
            label = f"t={ep.steps['t'][k] - t0:5.1f}s  {SOURCES[src[k]] if src[k] >= 0 else '?'}"
            cv2.putText(frame, label, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
            if inter[k]:
                cv2.rectangle(frame, (0, 0), (frame.shape[1] - 1, frame.shape[0] - 1), (255, 0, 0), 6)
            yield frame

    return write_video(frames(), out, fps)
