"""``robot-learning dataset shrink``: a copy of a dataset small enough to move to a training machine.

Camera streams are almost all of a recording: 640x480 colour and aligned depth at 30 Hz make
about 19 MB an episode, while a policy reads a camera at 96x96 and only at the control steps
(10 Hz). The copy keeps each finished episode's step table and low-dimensional streams as they
are and, for each camera stream, only the frames the step table points at, resized: area
averaging for colour (what training does itself, so a policy trains on the same pixels from
either copy), nearest neighbour for depth and other single-channel images (no depth value that
was never measured is invented). Streams named in ``drop`` are left out of the copy. A camera
with a region in ``rois`` keeps only that part of its view (``resize_frame``'s crop): the
episode's ``shrunk`` attributes record it, training adopts it, and the checkpoint carries it to
the policy server, which cuts the same region from the live frames.

The copy is written beside its destination as ``<out>.partial`` and renamed when whole: a copy
cut off by a crash is never mistaken for a dataset.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from robot_learning.data.layout import compressors
from robot_learning.data.sampler import Roi, resize_frame
from robot_learning.data.store import IMAGE_CHUNK, WRITE_CONFIG, Dataset, DatasetError, fsync_tree


def _is_camera(stream: zarr.Group, min_pixels: int) -> bool:
    """An image stream worth shrinking: frames [n, H, W(, C)] larger than ``min_pixels``
    (tactile taxel grids are images too, 4x4, and stay as they are)."""
    data = stream.get("data")
    return (isinstance(data, zarr.Array) and data.ndim in (3, 4) and data.dtype.kind in "uif"
            and data.shape[1] * data.shape[2] > min_pixels)


def _shrink_stream(src: zarr.Group, dst: zarr.Group, rows: np.ndarray, size: tuple[int, int],
                   roi: Roi | None = None) -> None:
    """Frames ``rows`` of ``src`` (their ``roi``) at ``size``, with their stamps, into the new group ``dst``."""
    dst.attrs.update(dict(src.attrs))
    data = src["data"]
    colour = data.ndim == 4 and data.shape[3] == 3  # area averaging for RGB, nearest for depth
    frames = [resize_frame(data[int(r)], size, nearest=not colour, roi=roi) for r in rows]
    shape = frames[0].shape if frames else (*size, *data.shape[3:])
    out = dst.create_array("data", shape=(len(frames), *shape), dtype=data.dtype, chunks=(IMAGE_CHUNK, *shape),
                           compressors=compressors(data.dtype, True), config=WRITE_CONFIG)
    if frames:
        out[:] = np.stack(frames)
    for k in ("t_recv", "t"):
        a = dst.create_array(k, shape=(len(rows),), dtype="float64", chunks=(max(len(rows), 1),), fill_value=np.nan,
                             compressors=compressors(np.dtype("f8"), False), config=WRITE_CONFIG)
        if len(rows):
            a[:] = src[k][:][rows]


def shrink_dataset(src: str | Path, out: str | Path, image_size: tuple[int, int], drop: tuple[str, ...] = (),
                   min_pixels: int = 16 * 16, progress: bool = True, rois: dict[str, Roi] | None = None) -> dict:
    """Write the shrunk copy of ``src`` to ``out``; returns the sizes in bytes before and after."""
    rois = dict(rois or {})
    src, out = Path(src), Path(out)
    if out.exists():
        raise DatasetError(f"{out} exists: choose a new --out (the copy never overwrites a dataset)")
    ds = Dataset(src)
    present = {n for ep in ds.episodes() for n in ep.streams}
    missing = [d for d in drop if d not in present]
    if missing:
        raise DatasetError(f"--drop names {', '.join(missing)}, which no episode of {src} has")
    cams = {n for ep in ds.episodes() for n, g in ep.streams.items() if _is_camera(g, min_pixels)} - set(drop)
    stray = [c for c in rois if c not in cams]
    if stray:
        raise DatasetError(f"--roi names {', '.join(stray)}, which is not a camera kept in the copy "
                           f"(cameras: {', '.join(sorted(cams)) or 'none'})")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(src / "zarr.json", tmp / "zarr.json")
    (tmp / "episodes").mkdir()
    shutil.copy2(src / "episodes" / "zarr.json", tmp / "episodes" / "zarr.json")
    for ep in tqdm(list(ds.episodes()), desc="shrink", unit="ep", disable=not progress):
        name = ep.group.basename
        cameras = [n for n, g in ep.streams.items() if n not in drop and _is_camera(g, min_pixels)]
        skip = {*cameras, *drop}
        src_ep, dst_ep = src / "episodes" / name, tmp / "episodes" / name

        def ignore(folder: str, names: list[str], src_ep=src_ep, skip=skip) -> set[str]:
            here = Path(folder).relative_to(src_ep)
            if here == Path("streams"):
                return skip & set(names)
            if here == Path("steps/index"):
                return set(drop) & set(names)
            if here == Path("steps/obs"):
                return {n for n in names if n.partition(".")[0] in drop}
            return set()

        shutil.copytree(src_ep, dst_ep, ignore=ignore)
        group = zarr.open_group(str(dst_ep), mode="r+")
        counts = dict(group.attrs.get("stream_counts", {}))
        for cam in cameras:
            index = group["steps"]["index"][cam]
            old = index[:]
            rows = np.unique(old[old >= 0])
            index[:] = np.where(old >= 0, np.searchsorted(rows, np.maximum(old, 0)), -1).astype(old.dtype)
            _shrink_stream(ep.streams[cam], group["streams"].create_group(cam), rows, image_size, rois.get(cam))
            counts[cam] = len(rows)
        for d in drop:
            counts.pop(d, None)
        group.attrs["stream_counts"] = counts
        group.attrs["shrunk"] = {"image_size": list(image_size), "dropped": list(drop), "from": str(src),
                                 "rois": {c: list(r) for c, r in rois.items() if c in cameras}}
    fsync_tree(tmp)
    tmp.rename(out)
    return {"before": _size(src), "after": _size(out), "episodes": len(ds)}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
