"""``robot-learning plot RUN[=LABEL] ...``: several training runs on one figure.

What a person asks after two runs is "which learned faster": with and without the intervening
operator, with RLIF rewards or the sim's, two seeds. Each run's own ``curves.png`` answers for
one run; this puts the runs' evaluation success, their training episodes' success and the
share of steps the operator drove side by side, over robot time (env steps times the env's
period), read from each run's ``metrics.jsonl`` (SAC, DSRL and residual runs write it) or a
graph RL actor's ``episodes.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def moving_average(values: np.ndarray, n: int = 10) -> np.ndarray:
    """Mean of each value and the up to ``n - 1`` before it (single episodes are 0 or 1)."""
    values = np.asarray(values, float)
    return np.convolve(values, np.ones(n), mode="full")[:len(values)] / np.minimum(np.arange(1, len(values) + 1), n)


def read_rows(path: Path) -> list[dict]:
    """A JSON-lines file's rows, leaving out a line cut short by a kill (the rest of the run is
    still worth reading)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _graph_row(r: dict, operator: bool) -> dict:
    """One row of the graph actor's ``episodes.jsonl`` keyed as train sac keys its own."""
    row = {"env_steps": r["total_steps"], "robot_time_s": r.get("robot_time_s", r["total_steps"] / 10.0)}
    if "eval_success" in r:  # an evaluation
        return row | {k: r[k] for k in ("eval_success", "eval_return", "eval_length")}
    row["episode_success"] = float(r["success"])
    if operator:
        row["intervention_rate"] = r.get("intervention_rate", 0.0)
    return row


def read_metrics(run: Path) -> list[dict]:
    """A run's rows: ``metrics.jsonl`` of train sac, dsrl or residual, or the ``episodes.jsonl``
    that the graph's RL actor writes to its ``report_dir`` (its training episodes, keyed here
    as train sac keys them), so a run through the ROS graph plots beside an env run."""
    run = Path(run)
    graph = not (run / "metrics.jsonl").is_file() and (run / "episodes.jsonl").is_file()
    path = run / ("episodes.jsonl" if graph else "metrics.jsonl")
    if not path.is_file():
        raise SystemExit(f"plot: {run} has no metrics.jsonl (train sac, dsrl, residual) or episodes.jsonl "
                         "(the graph's RL actor, its report_dir)")
    rows = read_rows(path)
    if graph:  # training episodes, evaluation episodes ("eval": left out), and evaluations
        rows = [r for r in rows if "total_steps" in r and not r.get("eval")]
        operator = any(r.get("intervention_rate", 0.0) > 0 for r in rows)  # 0 throughout: nobody was there
        rows = [_graph_row(r, operator) for r in rows]
    return rows


def _minutes(r: dict) -> float:
    return r["robot_time_s"] / 60  # every run writes it (env steps times the env's period)


def plot_runs(runs: list[tuple[Path, str]], out: Path, smooth: int = 20) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(label, read_metrics(run)) for run, label in runs]
    intervened = any("intervention_rate" in r for _, rows in data for r in rows)
    fig, ax = plt.subplots(1, 3 if intervened else 2, figsize=(16 if intervened else 11, 3.8))
    for k, (label, rows) in enumerate(data):
        color = f"C{k}"
        ev = [r for r in rows if "eval_success" in r]
        ax[0].plot([_minutes(r) for r in ev], [r["eval_success"] for r in ev], "o-", color=color, label=label)
        eps = [r for r in rows if "episode_success" in r or "train_success" in r]
        t = [_minutes(r) for r in eps]
        ok = [r.get("episode_success", r.get("train_success", 0.0)) for r in eps]
        if eps:
            ax[1].plot(t, moving_average(ok, smooth), "-", color=color, label=label)
        if intervened and any("intervention_rate" in r for r in eps):
            ax[2].plot(t, moving_average([r.get("intervention_rate", 0.0) for r in eps], smooth), "-", color=color,
                       label=label)
    ax[0].set(xlabel="robot time (min)", ylabel="success rate", ylim=(-0.05, 1.05), title="evaluation")
    ax[1].set(xlabel="robot time (min)", ylabel="success rate", ylim=(-0.05, 1.05),
              title=f"training episodes (mean of {smooth})")
    if intervened:
        ax[2].set(xlabel="robot time (min)", ylabel="share of steps", ylim=(-0.05, 1.05),
                  title=f"operator's share of steps (mean of {smooth} episodes)")
    for a in ax:
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="several training runs on one figure (evaluation success, training episodes, "
                                    "interventions over robot time)")
    p.add_argument("runs", nargs="+", help="run directories, each optionally =LABEL (runs/sac-...=with operator)")
    p.add_argument("--out", default="runs/compare.png")
    p.add_argument("--smooth", type=int, default=20, help="episodes in the training curves' moving average")


def run(a: argparse.Namespace) -> int:
    runs = []
    for spec in a.runs:
        path, _, label = spec.partition("=")
        runs.append((Path(path), label or Path(path).name))
    out = plot_runs(runs, Path(a.out), a.smooth)
    print(f"plot: {out}")
    return 0
