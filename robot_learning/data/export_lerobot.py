"""Export to LeRobot's dataset format v3.0 (what LeRobot 0.4 and later load; they refuse v2.1).

Layout: frames of many episodes per parquet file (``data/chunk-NNN/file-NNN.parquet``), one
MP4 per colour camera holding its episodes back to back (``videos/<key>/chunk-NNN/file-NNN.mp4``),
and the metadata under ``meta/``: ``info.json`` (features, fps, path templates), ``stats.json``,
``tasks.parquet`` (the task text is its pandas index) and ``episodes/chunk-NNN/file-NNN.parquet``
(per episode: its rows in the data file, its time span in each video, its tasks).

Each control-rate step is a frame: ``observation.state`` is the step's low-dimensional
observations concatenated (names in info.json), ``action`` the executed action, each colour
camera a video ``observation.images.<stream>`` at the control rate (constant frame rate,
episodes contiguous, so frame i of an episode is at ``from_timestamp + i / fps``). Depth stays
lossless: 16-bit PNG frames in the parquet (an ``image`` feature flagged ``is_depth_map``),
because no v3 reader returns 16-bit pixels from a video.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robot_learning.data.store import Dataset, DatasetError
from robot_learning.data.view import image_streams, to_rgb

CHUNK = 1000           # files per chunk directory
DATA_FILE_MB = 100     # a data file is closed once it is this large (at an episode boundary)
VIDEO_FILE_MB = 200
ACTION_NAMES = ["vx", "vy", "vz", "wx", "wy", "wz", "gripper"]
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"


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
    """min, max, mean, std, count and quantiles over the first axis (per channel for images)."""
    x = x.astype(np.float64)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
    out |= {f"q{round(q * 100):02d}": np.quantile(x, q, axis=0) for q in QUANTILES}
    return {k: np.asarray(v).tolist() for k, v in out.items()} | {"count": [len(x)]}


def _file_index(n: int) -> dict[str, int]:
    return {"chunk_index": n // CHUNK, "file_index": n % CHUNK}


class _Files:
    """Rolls to a new numbered file once the current one reaches ``limit_mb``."""

    def __init__(self, limit_mb: float):
        self.limit, self.n, self.size = limit_mb * 2**20, 0, 0

    def place(self, nbytes: int) -> dict[str, int]:
        if self.size and self.size + nbytes > self.limit:
            self.n, self.size = self.n + 1, 0
        self.size += nbytes
        return _file_index(self.n)


class _Video:
    """One camera's MP4 files, episodes appended back to back at a constant frame rate."""

    def __init__(self, out: Path, key: str, fps: float):
        self.out, self.key, self.fps = out, key, fps
        self.files, self.writer, self.where, self.t = _Files(VIDEO_FILE_MB), None, None, 0.0

    def append(self, frames: list[np.ndarray]) -> dict:
        import cv2

        h, w = frames[0].shape[:2]
        where = self.files.place(sum(f.nbytes for f in frames) // 20)  # ~20:1 for MPEG-4 at this quality
        if where != self.where:
            self.close()
            path = self.out / VIDEO_PATH.format(video_key=self.key, **where)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise DatasetError(f"{path}: OpenCV cannot write MPEG-4 video here")
            self.where, self.t = where, 0.0
        for f in frames:
            self.writer.write(np.ascontiguousarray(f[..., ::-1]))
        start = self.t
        self.t += len(frames) / self.fps
        return {f"videos/{self.key}/chunk_index": where["chunk_index"],
                f"videos/{self.key}/file_index": where["file_index"],
                f"videos/{self.key}/from_timestamp": start, f"videos/{self.key}/to_timestamp": self.t}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


def _tasks_table(tasks: dict[str, int]):
    """tasks.parquet as pandas writes a frame indexed by the task text (LeRobot reads the text
    back as the index): the same columns and the pandas schema metadata, without pandas."""
    import pyarrow as pa

    names = sorted(tasks, key=tasks.get)
    meta = {"index_columns": ["task"], "column_indexes": [
        {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
         "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    table = pa.table({"task_index": pa.array([tasks[t] for t in names], pa.int64()), "task": pa.array(names)})
    return table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})


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
    episodes: list[dict] = []
    fps, features, colour, depth_cams = None, None, None, None
    videos: dict[str, _Video] = {}
    data_files, tables, where_data = _Files(DATA_FILE_MB), [], None
    all_state, all_action, image_stats = [], [], {}
    total = 0

    def write_data() -> None:
        if tables:
            path = out / DATA_PATH.format(**where_data)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.concat_tables(tables), path)
            tables.clear()

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
        if colour is None:
            cams = image_streams(ep)
            colour = [c for c in cams if ep.streams[c]["data"].dtype == np.uint8]
            depth_cams = [c for c in cams if c not in colour]
        if features is None:
            scalar = {"dtype": "float32", "shape": [1], "names": None}
            features = {
                "observation.state": {"dtype": "float32", "shape": [state.shape[1]], "names": names},
                "action": {"dtype": "float32", "shape": [action.shape[1]], "names": ACTION_NAMES[:action.shape[1]]},
                "next.reward": scalar, "next.done": {**scalar, "dtype": "bool"},
                "intervention": {**scalar, "dtype": "bool"},
                "timestamp": scalar, **{k: {"dtype": "int64", "shape": [1], "names": None}
                                        for k in ("frame_index", "episode_index", "index", "task_index")}}
        columns = {
            "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.ravel()), state.shape[1]),
            "action": pa.FixedSizeListArray.from_arrays(pa.array(action.ravel()), action.shape[1]),
            "next.reward": pa.array(ep.steps["reward"][:].astype(np.float32)),
            "next.done": pa.array(ep.steps["done"][:].astype(bool)),
            "intervention": pa.array(ep.steps["intervention"][:].astype(bool)),
            "timestamp": pa.array((np.arange(n) / fps).astype(np.float32)),
            "frame_index": pa.array(np.arange(n, dtype=np.int64)),
            "episode_index": pa.array(np.full(n, n_ep, np.int64)),
            "index": pa.array(np.arange(total, total + n, dtype=np.int64)),
            "task_index": pa.array(np.full(n, tasks[task], np.int64)),
        }
        row = {"episode_index": n_ep, "tasks": [task], "length": n, "source_episode": ep.index,
               "success": ep.meta.get("success")}
        for cam in colour + depth_cams:
            key = f"observation.images.{cam}"
            idx = ep.steps["index"][cam][:] if cam in ep.steps["index"] else np.full(n, -1)
            data = ep.streams[cam]["data"]
            h, w = data.shape[1], data.shape[2]
            frames = [data[int(i)] if i >= 0 else np.zeros(data.shape[1:], data.dtype) for i in idx]
            if cam in colour:
                frames = [to_rgb(f) for f in frames]
                row |= videos.setdefault(key, _Video(out, key, fps)).append(frames)
                features.setdefault(key, {"dtype": "video", "shape": [h, w, 3],
                                          "names": ["height", "width", "channels"],
                                          "info": {"video.fps": fps, "video.height": h, "video.width": w,
                                                   "video.channels": 3, "video.codec": "mpeg4",
                                                   "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                                                   "has_audio": False}})
                px = np.stack(frames).reshape(-1, 3)[:: max(1, n * h * w // 100_000)] / 255.0
            else:  # depth in millimetres, 16-bit PNG: lossless
                pngs = [cv2.imencode(".png", np.ascontiguousarray(f.astype(np.uint16)))[1].tobytes() for f in frames]
                columns[key] = pa.array([{"bytes": b, "path": None} for b in pngs],
                                        pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
                features.setdefault(key, {"dtype": "image", "shape": [h, w, 1],
                                          "names": ["height", "width", "channels"],
                                          "info": {"is_depth_map": True, "video.is_depth_map": True,
                                                   "depth_unit": "mm"}})
                px = np.stack(frames).reshape(-1, 1)[:: max(1, n * h * w // 100_000)].astype(np.float64)
            image_stats.setdefault(key, []).append(px)
        table = pa.table(columns)
        where = data_files.place(table.nbytes)
        if where != where_data:
            write_data()
            where_data = where
        tables.append(table)
        row |= {"data/chunk_index": where["chunk_index"], "data/file_index": where["file_index"],
                "dataset_from_index": total, "dataset_to_index": total + n, **{
                    f"meta/episodes/{k}": v for k, v in _file_index(0).items()}}
        episodes.append(row)
        all_state.append(state)
        all_action.append(action)
        total += n
    write_data()
    for v in videos.values():
        v.close()
    ep_path = out / EPISODES_PATH.format(**_file_index(0))
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episodes), ep_path)
    pq.write_table(_tasks_table(tasks), out / "meta" / "tasks.parquet")
    stats = {"observation.state": _stats(np.concatenate(all_state)), "action": _stats(np.concatenate(all_action))}
    for key, px in image_stats.items():  # per channel, shape (C, 1, 1), colour in [0, 1]
        s = _stats(np.concatenate(px))
        stats[key] = {k: (np.asarray(v).reshape(-1, 1, 1).tolist() if k != "count" else v) for k, v in s.items()}
    (out / "meta" / "stats.json").write_text(json.dumps(stats, indent=1))
    info = {
        "codebase_version": "v3.0", "robot_type": robot_type, "total_episodes": len(episodes),
        "total_frames": total, "total_tasks": len(tasks), "chunks_size": CHUNK,
        "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB, "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if videos else None, "features": features,
    }
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    return out
