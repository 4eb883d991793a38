"""Export to LeRobot's dataset format, version 2.1 (per-episode parquet and MP4 files, JSON-lines
metadata), which LeRobot loads directly and converts to its newer layouts with its own tool.

Each control-rate step becomes a frame: ``observation.state`` is the step's low-dimensional
observations concatenated (names listed in info.json), ``action`` the executed action, and
each camera stream a video ``observation.images.<stream>`` at the control rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robot_learning.data.store import Dataset, DatasetError
from robot_learning.data.view import image_streams, to_rgb

CHUNK = 1000
ACTION_NAMES = ["vx", "vy", "vz", "wx", "wy", "wz", "gripper"]


def _state(ep) -> tuple[np.ndarray, list[str]]:
    cols, names = [], []
    for key in ep.meta["recipe"]["steps"]["observations"]:
        if key not in ep.steps["obs"]:
            continue
        v = ep.steps["obs"][key][:].reshape(ep.n_steps, -1).astype(np.float32)
        cols.append(v)
        names += [f"{key}[{i}]" for i in range(v.shape[1])]
    return (np.concatenate(cols, 1) if cols else np.zeros((ep.n_steps, 0), np.float32)), names


def _stats(x: np.ndarray) -> dict:
    x = x.reshape(len(x), -1).astype(np.float64)
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [len(x)]}


def export_lerobot(dataset: str | Path, out: str | Path, robot_type: str = "panda", progress: bool = True) -> Path:
    import cv2
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = Dataset(dataset)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} exists and is not empty: export into a new directory")
    if not len(ds):
        raise DatasetError(f"{dataset} has no finished episodes to export")
    (out / "meta").mkdir(parents=True, exist_ok=True)
    tasks: dict[str, int] = {}
    episodes, ep_stats = [], []
    total, fps, features, cams = 0, None, None, None
    for n_ep, ep in enumerate(tqdm(list(ds.episodes()), desc="export LeRobot", unit="ep", disable=not progress)):
        rate = float(ep.meta["control_rate"])
        fps = fps or rate
        if rate != fps:
            raise DatasetError(f"episode {ep.index} is at {rate} Hz, earlier ones at {fps} Hz: LeRobot needs one fps")
        state, names = _state(ep)
        action = ep.steps["action"][:].astype(np.float32)
        n = ep.n_steps
        task = str(ep.meta.get("task") or "default")
        tasks.setdefault(task, len(tasks))
        chunk = n_ep // CHUNK
        ep_cams = image_streams(ep)
        cams = cams if cams is not None else ep_cams
        if features is None:
            features = {
                "observation.state": {"dtype": "float32", "shape": [state.shape[1]], "names": names},
                "action": {"dtype": "float32", "shape": [action.shape[1]], "names": ACTION_NAMES[:action.shape[1]]},
                "next.reward": {"dtype": "float32", "shape": [1], "names": None},
                "next.done": {"dtype": "bool", "shape": [1], "names": None},
                "intervention": {"dtype": "bool", "shape": [1], "names": None},
                "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                "frame_index": {"dtype": "int64", "shape": [1], "names": None},
                "episode_index": {"dtype": "int64", "shape": [1], "names": None},
                "index": {"dtype": "int64", "shape": [1], "names": None},
                "task_index": {"dtype": "int64", "shape": [1], "names": None},
            }
        t = ep.steps["t"][:]
        table = pa.table({
            "observation.state": pa.array(list(state), type=pa.list_(pa.float32())),
            "action": pa.array(list(action), type=pa.list_(pa.float32())),
            "next.reward": pa.array(ep.steps["reward"][:].astype(np.float32)),
            "next.done": pa.array(ep.steps["done"][:].astype(bool)),
            "intervention": pa.array(ep.steps["intervention"][:].astype(bool)),
            "timestamp": pa.array((t - t[0]).astype(np.float32) if n else np.zeros(0, np.float32)),
            "frame_index": pa.array(np.arange(n, dtype=np.int64)),
            "episode_index": pa.array(np.full(n, n_ep, np.int64)),
            "index": pa.array(np.arange(total, total + n, dtype=np.int64)),
            "task_index": pa.array(np.full(n, tasks[task], np.int64)),
        })
        pq_path = out / "data" / f"chunk-{chunk:03d}" / f"episode_{n_ep:06d}.parquet"
        pq_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, pq_path)
        stats = {"observation.state": _stats(state), "action": _stats(action)}
        for cam in cams:
            key = f"observation.images.{cam}"
            vpath = out / "videos" / f"chunk-{chunk:03d}" / key / f"episode_{n_ep:06d}.mp4"
            vpath.parent.mkdir(parents=True, exist_ok=True)
            idx = ep.steps["index"][cam][:] if cam in ep.steps["index"] else np.full(n, -1)
            data = ep.streams[cam]["data"]
            h, w = data.shape[1], data.shape[2]
            vw = cv2.VideoWriter(str(vpath), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            for i in idx:
                img = to_rgb(data[int(i)]) if i >= 0 else np.zeros((h, w, 3), np.uint8)
                vw.write(np.ascontiguousarray(img[..., ::-1]))
            vw.release()
            features[key] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                             "info": {"video.fps": fps, "video.height": h, "video.width": w, "video.channels": 3,
                                      "video.codec": "mpeg4", "video.pix_fmt": "yuv420p",
                                      "video.is_depth_map": "depth" in cam, "has_audio": False}}
        episodes.append({"episode_index": n_ep, "tasks": [task], "length": n,
                         "source_episode": ep.index, "success": ep.meta.get("success")})
        ep_stats.append({"episode_index": n_ep, "stats": stats})
        total += n
    info = {
        "codebase_version": "v2.1", "robot_type": robot_type, "total_episodes": len(episodes),
        "total_frames": total, "total_tasks": len(tasks), "total_videos": len(episodes) * len(cams or []),
        "total_chunks": (len(episodes) - 1) // CHUNK + 1, "chunks_size": CHUNK, "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": features,
    }
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    (out / "meta" / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for t, i in tasks.items()))
    (out / "meta" / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    (out / "meta" / "episodes_stats.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ep_stats))
    return out
