"""``robot-learning dataset info|validate|repair|view|export|import``."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from robot_learning.data.layout import explain_os_error
from robot_learning.data.store import Dataset, DatasetError

if TYPE_CHECKING:
    from robot_learning.data.repair import StoreCheck


def add_parser(sub) -> None:
    ds = sub.add_parser("dataset", help="inspect, check, repair, view, export and import datasets")
    dsub = ds.add_subparsers(dest="dataset_cmd", required=True)
    p = dsub.add_parser("info", help="summary table of a dataset's episodes")
    p.add_argument("path")
    p = dsub.add_parser("validate", help="check the schema and every episode, reading every chunk; exit 1 on problems")
    p.add_argument("path")
    p = dsub.add_parser("repair", help="recover episodes a crash cut off; rebuild or drop damaged ones")
    p.add_argument("path")
    p = dsub.add_parser("view", help="render an episode to a contact sheet (.png) or video (.mp4)")
    p.add_argument("path")
    p.add_argument("--episode", type=int, default=None, help="episode index (default: the first)")
    p.add_argument("--out", default=None, help="output file: .png or .mp4 (default: runs/view/...png)")
    p = dsub.add_parser("export", help="export to LeRobot's format or to rosbag2 MCAP")
    p.add_argument("path")
    p.add_argument("--format", choices=("lerobot", "mcap"), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--episodes", default=None, help="comma-separated indices (mcap; default all)")
    p = dsub.add_parser("shrink", help="a copy with camera frames resized, only those the steps use (for a "
                        "training machine)")
    p.add_argument("path")
    p.add_argument("--out", required=True)
    p.add_argument("--image-size", default="96,96", help="H,W of every camera frame in the copy")
    p.add_argument("--drop", default="", help="comma-separated streams to leave out (e.g. front_depth)")
    p.add_argument("--roi", default="", help="comma-separated camera:x0:y0:x1:y1: keep only that region of a "
                   "camera's view (fractions of its width and height), e.g. front_color:0.23:0.27:0.84:0.78; "
                   "policies trained on the copy cut the same region from live frames")
    p = dsub.add_parser("import", help="import rosbag2/MCAP bags (one episode each) into a dataset")
    p.add_argument("bags", nargs="+")
    p.add_argument("--dataset", required=True)
    p.add_argument("--recipe", default="datasets/recipes/workcell.yaml", help="topic -> stream mapping")
    p.add_argument("--task", default="")
    p.add_argument("--success", choices=("true", "false", "unknown"), default="unknown")


def print_info(ds: Dataset) -> None:
    s = ds.summary()
    print(f"{ds.path}  (schema v{ds.meta.get('schema_version')}, created {ds.meta.get('created')})")
    print(f"{'ep':>4} {'status':<10} {'task':<12} {'operator':<16} {'steps':>6} {'dur(s)':>7} {'success':<8} "
          f"{'interv.':>7} {'rejected':>8}")
    for i in ds.infos:
        m = i.meta
        ok = {True: "yes", False: "no"}.get(m.get("success"), "-")
        rej = sum(sum(v.values()) for v in (m.get("rejected_samples") or {}).values())
        print(f"{i.index:>4} {i.status:<10} {str(m.get('task', ''))[:12]:<12} {str(m.get('operator', ''))[:16]:<16} "
              f"{m.get('n_steps', 0):>6} {m.get('duration', 0.0):>7.1f} {ok:<8} {len(m.get('interventions', [])):>7} "
              f"{rej:>8}")
    for index, faults in sorted(ds.damaged.items()):
        print(f"{index:>4} {'damaged':<10} {'; '.join(map(str, faults))}")
    rate = f"{s['success_rate']:.0%}" if s["success_rate"] is not None else "-"
    print(f"total: {s['episodes']} episodes, {s['steps']} steps, {s['duration_s'] / 60:.1f} min, success {rate}, "
          f"{s['interventions']} interventions" + (f", {s['interrupted']} interrupted (run `robot-learning "
                                                   f"dataset repair {ds.path}`)" if s["interrupted"] else ""))
    if ds.damaged:
        from robot_learning.data.repair import remedy

        for index, faults in sorted(ds.damaged.items()):
            print(f"episode {index} is damaged and skipped: {remedy(ds.path, index, faults)}")
    print(f"(metadata checked; `robot-learning dataset validate {ds.path}` reads every chunk)")


def print_check(report: StoreCheck) -> bool:
    """``validate``'s report: each damaged episode with its faults and what to do. True when sound."""
    from robot_learning.data.repair import remedy

    if report.error:
        print(f"dataset: {report.error}", file=sys.stderr)
        return False
    problems = report.problems()
    if report.dataset.incomplete:
        print(f"problem: {problems[0]}")
    for ep in report.damaged:
        for f in ep.faults:
            print(f"problem: episode {ep.index}: {f}")
        print(f"  what to do: {remedy(report.path, ep.index, ep.faults)}")
    arrays = sum(e.arrays for e in report.episodes)
    plain = sum(e.unchecksummed for e in report.episodes)
    verdict = "OK" if not problems else f"{len(problems)} problem(s) in {len(report.damaged)} episode(s)"
    print(f"{len(report.episodes)} episodes checked, every chunk of {arrays} arrays read: {verdict}")
    if plain:
        print(f"note: {plain} of {arrays} arrays were written without chunk checksums (before robot-learning "
              "added them): in those only chunks that fail to decode are found, not altered values")
    return not problems


def run(a: argparse.Namespace) -> int:
    try:
        return _run(a)
    except DatasetError as e:
        print(f"dataset: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # what no check foresaw still gets the path and a plain reason
        print(f"dataset: {e.filename or a.path}: {explain_os_error(e)}: check the path and its permissions",
              file=sys.stderr)
        return 1


def _run(a: argparse.Namespace) -> int:
    cmd = a.dataset_cmd
    if cmd == "info":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # interrupted and damaged episodes are in the table
            ds = Dataset(a.path)
        print_info(ds)
        return 1 if ds.damaged else 0
    if cmd == "validate":
        from robot_learning.data.repair import check_store

        return 0 if print_check(check_store(a.path)) else 1
    if cmd == "repair":
        from robot_learning.data.repair import LEFT, repair_path

        done = repair_path(a.path, report=print)
        for idx, action in sorted(done.items()):
            print(f"episode {idx}: {action}")
        left = [i for i, action in done.items() if action.startswith(LEFT)]
        print("nothing to repair" if not done else f"{len(done)} episode(s) handled"
              + (f"; {len(left)} left as they are: fix what is named and run repair again" if left else ""))
        return 1 if left else 0
    if cmd == "view":
        from robot_learning.data.view import contact_sheet, video

        ds = Dataset(a.path)
        if not len(ds):
            raise DatasetError(f"{a.path} has no finished episodes")
        ep = ds.episode(a.episode if a.episode is not None else ds.indices[0])
        out = Path(a.out or f"runs/view/{Path(a.path).stem}_episode_{ep.index:06d}.png")
        path = video(ep, out) if out.suffix == ".mp4" else contact_sheet(ep, out)
        print(f"wrote {path}")
        return 0
    if cmd == "shrink":
        from robot_learning.data.shrink import shrink_dataset

        try:
            size = tuple(int(v) for v in a.image_size.split(","))
        except ValueError:
            size = ()
        if len(size) != 2 or min(size) <= 0:
            raise DatasetError(f"--image-size is H,W in pixels (e.g. 96,96), not '{a.image_size}'")
        from robot_learning.data.sampler import parse_rois

        try:
            rois = parse_rois([r for r in a.roi.split(",") if r], "--roi")
        except ValueError as e:
            raise DatasetError(str(e)) from None
        s = shrink_dataset(a.path, a.out, size, tuple(d for d in a.drop.split(",") if d), rois=rois)
        print(f"wrote {a.out}: {s['episodes']} episodes, {s['before'] / 1e6:.1f} MB -> {s['after'] / 1e6:.1f} MB")
        return 0
    if cmd == "export":
        if a.format == "lerobot":
            from robot_learning.data.export_lerobot import export_lerobot

            print(f"wrote {export_lerobot(a.path, a.out)}")
        else:
            from robot_learning.data.mcap_io import export_mcap

            eps = [int(x) for x in a.episodes.split(",")] if a.episodes else None
            for bag in export_mcap(a.path, a.out, eps):
                print(f"wrote {bag}")
        return 0
    if cmd == "import":
        from robot_learning.data.mcap_io import import_mcap

        success = {"true": True, "false": False}.get(a.success)
        made = import_mcap(a.bags, a.dataset, a.recipe, task=a.task, success=success)
        print(f"imported {len(made)} episode(s) into {a.dataset}: {made}")
        return 0
    return 2
