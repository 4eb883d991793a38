"""System identification: the sim's arm (joint damping, armature, friction, servo gains), its
command latency and the objects' mass and friction, fitted to recorded episodes.

The cost is what the mirror measures: each episode replayed in the sim with candidate values
(``sim.mirror.replay``), the joints' RMS tracking difference plus the TCP's and the moving
objects' (the arm's own motion says little about a cube's mass and friction; whether the cube
stays in the grasp, and where it lands, does). SciPy's Powell
search (no gradients: a replay is a simulation, not a formula) varies the chosen parameters
within bounds, the scale factors in log space so that halving and doubling weigh alike. The
result is a parameter file in ``sim/randomization.yaml``'s terms (each value as a one-value
range), which ``Workcell``, the gym env, ``sim_node`` and ``mirror replay`` all load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# name -> (file section, file key, nominal, (low, high), log scale)
PARAMS: dict[str, tuple[str, str, float, tuple[float, float], bool]] = {
    "damping_scale": ("arm", "damping_scale", 1.0, (0.2, 5.0), True),
    "armature_scale": ("arm", "armature_scale", 1.0, (0.2, 5.0), True),
    "kp_scale": ("arm", "kp_scale", 1.0, (0.2, 5.0), True),
    "kv_scale": ("arm", "kv_scale", 1.0, (0.2, 5.0), True),
    "friction_nm": ("arm", "friction_nm", 0.0, (0.0, 3.0), False),
    "latency_s": ("latency", "action_s", 0.0, (0.0, 0.2), False),
    "mass_scale": ("objects", "mass_scale", 1.0, (0.2, 5.0), True),
    "friction_scale": ("objects", "friction_scale", 1.0, (0.2, 5.0), True),
}
TCP_WEIGHT = 10.0  # metres of TCP difference count like 10 rad of joint difference (1 cm ~ 0.1 rad)


def params_file(values: dict[str, float]) -> dict[str, dict[str, list[float]]]:
    """``values`` (by ``PARAMS`` name) as a parameter file: each one a range of one value."""
    out: dict[str, dict[str, list[float]]] = {}
    for name, v in values.items():
        section, key, *_ = PARAMS[name]
        out.setdefault(section, {})[key] = [float(v), float(v)]
    return out


def divergence_cost(episodes, values: dict[str, float], task: str = "") -> float:
    """Mean over ``episodes`` of the joints' RMS difference (rad) plus TCP_WEIGHT times the TCP's
    and each moving object's (m)."""
    from robot_learning.sim.mirror import replay

    costs = []
    for ep in episodes:
        d = replay(ep, task, params_file(values) or None)
        metres = np.sqrt(np.mean(d.tcp_error ** 2)) + sum(np.sqrt(np.mean(e ** 2)) for e in d.object_error.values())
        costs.append(float(np.sqrt(np.mean(d.joint_rms ** 2)) + TCP_WEIGHT * metres))
    return float(np.mean(costs))


@dataclass
class SysidResult:
    values: dict[str, float]
    cost_before: float            # the nominal sim's divergence
    cost_after: float
    evaluations: int
    history: list[tuple[dict[str, float], float]] = field(default_factory=list)

    @property
    def reduction(self) -> float:
        return 1.0 - self.cost_after / self.cost_before if self.cost_before > 0 else 0.0


def fit(episodes, names: list[str], task: str = "", max_evals: int = 60, progress: bool = True) -> SysidResult:
    """The ``names`` parameters (of ``PARAMS``) that make the sim replay ``episodes`` best."""
    from scipy.optimize import minimize
    from tqdm import tqdm

    unknown = [n for n in names if n not in PARAMS]
    if unknown:
        raise ValueError(f"unknown parameters {', '.join(unknown)} (known: {', '.join(PARAMS)})")
    if not episodes:
        raise ValueError("no episodes to fit to")
    spec = [PARAMS[n] for n in names]

    def decode(x: np.ndarray) -> dict[str, float]:
        return {n: float(np.exp(v) if s[4] else v) for n, v, s in zip(names, x, spec)}

    x0 = np.array([np.log(s[2]) if s[4] else s[2] for s in spec])
    bounds = [(np.log(s[3][0]), np.log(s[3][1])) if s[4] else s[3] for s in spec]
    history: list[tuple[dict[str, float], float]] = []
    bar = tqdm(total=max_evals, desc="sysid", unit="replay", disable=not progress)

    def cost(x: np.ndarray) -> float:
        values = decode(x)
        c = divergence_cost(episodes, values, task)
        history.append((values, c))
        bar.update()
        bar.set_postfix(cost=f"{c:.4f}", best=f"{min(h[1] for h in history):.4f}")
        return c

    before = cost(x0)
    try:
        minimize(cost, x0, method="Powell", bounds=bounds,
                 options={"maxfev": max(1, max_evals - 1), "xtol": 1e-3, "ftol": 1e-4})
    finally:
        bar.close()
    best_values, best_cost = min(history, key=lambda h: h[1])
    return SysidResult(best_values, before, best_cost, len(history), history)


def write(path: str | Path, result: SysidResult, source: str) -> Path:
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (f"# `robot-learning sysid` on {source}: divergence {result.cost_before:.4f} -> {result.cost_after:.4f} "
            f"({result.reduction:.0%} less) after {result.evaluations} replays.\n"
            "# Load it as a sim parameter file: Workcell(randomization=...), sim_node randomization:=..., "
            "mirror replay --randomization ...\n")
    path.write_text(head + yaml.safe_dump(params_file(result.values), sort_keys=False))
    return path


def add_parser(sub) -> None:
    import argparse

    sy = sub.add_parser("sysid", help="fit the sim's arm, latency and objects to recorded episodes",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sy.add_argument("--dataset", required=True)
    sy.add_argument("--episodes", default="", help="comma-separated indices (default: all complete ones)")
    sy.add_argument("--params", default="damping_scale,kp_scale,latency_s",
                    help=f"comma-separated, of: {', '.join(PARAMS)}")
    sy.add_argument("--task", default="", help="default: the episodes' own")
    sy.add_argument("--max-evals", type=int, default=60, help="replays at most (each replays every episode)")
    sy.add_argument("--out", default="calibration/sim_params.yaml")


def run(a) -> int:
    import sys

    from robot_learning.data.store import Dataset
    from robot_learning.sim.mirror import late_commands

    ds = Dataset(a.dataset)
    chosen = [int(x) for x in a.episodes.split(",") if x.strip()]
    if not chosen:  # every complete episode that can be replayed
        for i in ds.indices:
            ep = ds.episode(i)
            if ep.meta.get("status") != "complete":
                continue
            if why := late_commands(ep):
                print(f"sysid: skipping {why}", file=sys.stderr)
                continue
            chosen.append(i)
    try:
        res = fit([ds.episode(i) for i in chosen], [n.strip() for n in a.params.split(",") if n.strip()],
                  a.task, a.max_evals)
    except (ValueError, KeyError) as e:
        print(f"sysid: {e}", file=sys.stderr)
        return 1
    out = write(a.out, res, f"{a.dataset} episodes {','.join(map(str, chosen))}")
    print(f"sysid: {', '.join(f'{k} {v:.4g}' for k, v in res.values.items())}; divergence {res.cost_before:.4f} -> "
          f"{res.cost_after:.4f} ({res.reduction:.0%} less) after {res.evaluations} replays; wrote {out}")
    return 0
