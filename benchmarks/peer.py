"""``--only peer`` (on request): our diffusion policy against LeRobot's at the same network, side
by side on this machine. LeRobot runs in its own environment (``scripts/lerobot_peer_env.sh``,
about 8 GB; ``LEROBOT_PEER_ENV`` points elsewhere), never in the project's.

The network is issue 15's: a ResNet18-size image encoder with GroupNorm for each of two 96x96
cameras cropped to 84x84, two observation frames, a 9-dim state, a U-Net 256/512/1024 over a
16-step chunk of 7-dim actions, DDIM with 10 steps, batch 64, two torch threads. Both sides run
the same work on random tensors in fresh processes, alternating, so the machine's drift falls on
both: a training step as each trainer takes it (forward, backward, clipping, optimizer; ours also
updates its EMA) and one chunk's inference. Each side runs in float32 and in its mixed precision
(ours: ``--precision auto``, bf16 where the CPU has bf16 units; LeRobot: ``use_amp``, torch's
CPU autocast, also bf16)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NET = {"state_dim": 9, "action_dim": 7, "image": 96, "crop": 84, "down_dims": [256, 512, 1024], "inference_steps": 10,
       "batch": 64, "threads": 2}


def ours(args: dict) -> dict:
    """Our side of the comparison (run in a fresh process of the project's venv)."""
    import time

    import torch

    from robot_learning.nets.precision import autocast, resolve
    from robot_learning.policies.diffusion import DiffusionConfig, DiffusionPolicy, DiffusionRunner
    from robot_learning.policies.normalizer import Normalizer
    from robot_learning.train.diffusion import clipped_step, optimizers

    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    cams = ["front_color", "wrist_color"]
    n, a = args["state_dim"], args["action_dim"]
    stats = {"state": {"min": [-1.0] * n, "max": [1.0] * n}, "action": {"min": [-1.0] * a, "max": [1.0] * a}}
    shape = [args["image"], args["image"], 3]
    cfg = DiffusionConfig(obs_dims={"state": n}, action_dim=a, image_shapes={c: shape for c in cams},
                          down_dims=list(args["down_dims"]), image_encoder="resnet18",
                          crop_fraction=args["crop"] / args["image"], inference_steps=args["inference_steps"])
    policy = DiffusionPolicy(cfg, Normalizer(stats))
    precision = resolve(args["precision"], "cpu")
    opt, ema = optimizers(policy, 1e-4, 1e-6, 0.995)   # the trainer's
    b = args["batch"]
    batch = {"obs/state": torch.randn(b, 2, n), "action": torch.randn(b, 16, a),
             **{f"image/{c}": torch.randint(0, 255, (b, 2, args["image"], args["image"], 3), dtype=torch.uint8)
                for c in cams}}

    def step() -> None:
        policy.train()
        with autocast("cpu", precision):
            loss = policy.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clipped_step(opt, policy.parameters(), 1.0)
        ema.update_parameters(policy)

    step_s = []
    for i in range(args["train_steps"] + 1):
        t0 = time.perf_counter()
        step()
        if i:
            step_s.append(time.perf_counter() - t0)
    # the DDIM-5 run trains as `auto` does: its split would repeat that one
    split = None if args.get("ours_steps") else time_split(step, args.get("profile_steps", 2))
    runner = DiffusionRunner(policy.eval(), "cpu", precision=args["precision"],
                             inference_steps=args.get("ours_steps") or args["inference_steps"])
    runner.warmup()   # as the policy server does: auto keeps the faster of fp32 and bf16 here
    window = {k: v[0].numpy() for k, v in batch.items() if k != "action"}
    infer_ms = []
    for i in range(args["infer_calls"] + 1):
        t0 = time.perf_counter()
        runner.act(window)
        if i:
            infer_ms.append((time.perf_counter() - t0) * 1e3)
    return {"step_s": step_s, "infer_ms": infer_ms, "params": sum(p.numel() for p in policy.parameters()),
            "torch": torch.__version__, "precision": precision, "infer_precision": runner.precision, "split": split}


# torch's compute kernels, by the profiler's op names; everything else in a step (normalization,
# activations, pooling, casts, layout copies, concatenation, the optimizer) moves memory
COMPUTE = {"convolutions": ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
                            "aten::_slow_conv2d_backward"),
           "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")}


def time_split(step, steps: int) -> dict[str, float]:
    """Seconds per training step in the compute kernels and in the rest, from torch's profiler
    (its own overhead included, so the total runs a little above the timed step). Why it is in the
    bench: bf16 halves a convolution's time on a CPU with AVX512-BF16 but leaves the rest of the
    step about where float32 has it, and that rest is what bounds the bf16/float32 ratio."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    split = dict.fromkeys([*COMPUTE, "the rest"], 0.0)
    for e in prof.key_averages():
        kind = next((k for k, ops in COMPUTE.items() if e.key in ops), "the rest")
        split[kind] += e.self_cpu_time_total / 1e6 / steps
    return split


def _run(python: Path, argv: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(NET["threads"])}
    out = subprocess.run([str(python), *argv], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def end_to_end(peer_env: Path, workdir: Path, steps: int) -> dict[tuple[str, str], tuple[float, float]]:
    """Training samples/s with data loading included: each side's own trainer, as a user runs it, on
    the same frames in its own format. Ours: ``robot-learning train diffusion`` on the zarr store
    (frames decoded and resized once, then collated from memory). LeRobot: ``lerobot-train`` on a
    dataset it recorded itself (``LeRobotDataset.create``: its video encoding), decoding each
    window's frames from video in loader processes (its default 4, and 1). Same network as the step
    comparison, crop at 90% (our trainer's) on both. Returns (samples/s, share of the time spent
    waiting for batches) per (trainer, precision)."""
    import re

    from benchmarks.ingest import offline_write
    from robot_learning.data.sampler import WindowSampler, WindowSpec
    from robot_learning.data.store import Dataset

    peer_env = peer_env.resolve()
    store = workdir / "offline.zarr"
    if not store.exists():
        offline_write(60.0, workdir)
    cams, obs = ["front_color", "wrist_color"], "joint_states.position"
    eps = WindowSampler(Dataset(store), WindowSpec(2, 16, (obs,), tuple(cams), (96, 96))).episodes
    npz = workdir / "peer_frames.npz"
    np.savez(npz, state=np.concatenate([e["obs"][obs] for e in eps]), action=np.concatenate([e["action"] for e in eps]),
             ends=np.cumsum([e["n"] for e in eps]), **{f"image/{c}": np.concatenate([e["images"][c] for e in eps])
                                                       for c in cams})
    root = workdir / "lerobot_peer"
    shutil.rmtree(root, ignore_errors=True)   # LeRobotDataset.create refuses an existing root
    _run(peer_env / "bin" / "python", [str(ROOT / "benchmarks" / "peer_lerobot_worker.py"),
                                       json.dumps({"mode": "build", "npz": str(npz), "root": str(root),
                                                   "repo_id": "bench/peer", "fps": 10})])
    res, every = {}, max(steps // 3, 1)
    env = {**os.environ, "OMP_NUM_THREADS": str(NET["threads"])}
    # LeRobot's default 4 loader processes, and 1, which suits two cores better (fewer decoders
    # competing with the step): the comparison is against the faster of the two
    for amp, loaders in ((False, 4), (True, 4), (False, 1), (True, 1)):
        argv = ["-m", "lerobot.scripts.lerobot_train", "--dataset.repo_id=bench/peer", f"--dataset.root={root}",
                "--policy.type=diffusion", "--policy.device=cpu", "--policy.push_to_hub=false",
                "--policy.crop_shape=[86,86]", "--policy.down_dims=[256,512,1024]", "--policy.n_obs_steps=2",
                "--policy.horizon=16", "--policy.n_action_steps=8", f"--policy.use_amp={str(amp).lower()}",
                f"--batch_size={NET['batch']}", f"--steps={3 * every}", f"--log_freq={every}",
                f"--num_workers={loaders}", "--save_checkpoint=false", "--eval_freq=0", "--wandb.enable=false",
                f"--output_dir={workdir / f'lerobot_run_{amp}_{loaders}'}"]
        out = subprocess.run([str(peer_env / "bin" / "python"), *argv], capture_output=True, text=True, cwd=workdir,
                             env=env, timeout=3600)
        logs = re.findall(r"updt_s:([\d.]+) data_s:([\d.]+)", out.stdout + out.stderr)
        if out.returncode != 0 or len(logs) < 2:
            raise RuntimeError(f"lerobot-train failed:\n{(out.stdout + out.stderr)[-2000:]}")
        # the first logging window holds the warm-up; the later ones are the steady state
        updt, data = (np.mean([float(x[i]) for x in logs[1:]]) for i in (0, 1))
        res[("LeRobot 0.4.4", f"{'amp' if amp else 'fp32'}, {loaders} loader{'s' if loaders > 1 else ''}")] = (
            NET["batch"] / (updt + data), data / (updt + data))
    run = workdir / "ours_run"
    subprocess.run([sys.executable, "-m", "robot_learning.cli", "train", "diffusion", "--dataset", str(store),
                    "--images", ",".join(cams), "--obs", obs, "--image-encoder", "resnet18",
                    "--down-dims", ",".join(map(str, NET["down_dims"])),
                    "--batch-size", str(NET["batch"]), "--steps", "100", "--val-fraction", "0", "--eval-episodes", "0",
                    "--threads", str(NET["threads"]), "--out", str(run)], check=True, capture_output=True, cwd=ROOT,
                   env=env, timeout=3600)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"samples_per_s"' in x]
    res[("ours", "auto")] = (rows[-1]["samples_per_s"], rows[-1]["data_share"])  # steps 51-100: after the warm-up
    return res


def section(quick: bool) -> list[str]:
    peer_env = Path(os.environ.get("LEROBOT_PEER_ENV", ROOT / ".venv-lerobot-peer"))
    if not (peer_env / "bin" / "python").exists():
        raise SystemExit(f"bench peer: no LeRobot environment at {peer_env}: run `bash scripts/lerobot_peer_env.sh` "
                         "(about 8 GB) or set LEROBOT_PEER_ENV")
    args = {**NET, "train_steps": 2 if quick else 6, "infer_calls": 3 if quick else 15}
    # "auto, DDIM 5": our deploy setting with half the sampling steps, at the success measured
    # for it in docs/learning.md (training is the same as auto's)
    runs = {("ours", "fp32"): [], ("ours", "auto"): [], ("ours", "auto, DDIM 5"): [], ("LeRobot 0.4.4", "fp32"): [],
            ("LeRobot 0.4.4", "amp"): []}
    rounds = 1 if quick else 3
    for r in range(rounds):
        for who, mode in runs:
            print(f"bench: peer round {r + 1}: {who} {mode} ...", flush=True)
            if who == "ours":
                precision, _, steps = mode.partition(", DDIM ")
                res = _run(Path(sys.executable), ["-m", "benchmarks.peer",
                                                  json.dumps({**args, "precision": precision,
                                                              "ours_steps": int(steps or 0)})])
            else:
                res = _run(peer_env / "bin" / "python", [str(ROOT / "benchmarks" / "peer_lerobot_worker.py"),
                                                         json.dumps({**args, "amp": mode == "amp"})])
            runs[(who, mode)].append(res)
    sps = {k: args["batch"] / np.median([s for r in v for s in r["step_s"]]) for k, v in runs.items()}
    p50 = {k: np.median([m for r in v for m in r["infer_ms"]]) for k, v in runs.items()}
    p99 = {k: np.percentile([m for r in v for m in r["infer_ms"]], 99) for k, v in runs.items()}
    base, amp = ("LeRobot 0.4.4", "fp32"), ("LeRobot 0.4.4", "amp")
    rows = ["## Against LeRobot: the same diffusion network, side by side\n",
            "A ResNet18-size encoder (GroupNorm) per 96x96 camera, two cameras cropped to 84x84, two observation "
            "frames, U-Net 256/512/1024, 16-step chunks, DDIM 10, batch 64, two torch threads, random tensors "
            f"(data loading not included), fresh processes alternating over {rounds} round(s). Parameters: "
            f"ours {runs[('ours', 'fp32')][0]['params'] / 1e6:.1f}M (an encoder per camera), LeRobot "
            f"{runs[base][0]['params'] / 1e6:.1f}M (one shared); torch {runs[('ours', 'fp32')][0]['torch']} against "
            f"{runs[base][0]['torch']} (LeRobot pins < 2.11). Ours `auto` trained in "
            f"{runs[('ours', 'auto')][0]['precision']} and sampled in {runs[('ours', 'auto')][0]['infer_precision']} "
            "here (the faster of the two, timed at warm-up as the policy server does).\n",
            "| policy | precision | training samples/s | vs LeRobot fp32 / amp | inference p50 (ms) | p99 (ms) "
            "| vs LeRobot fp32 / amp |", "|---|---|---|---|---|---|---|"]
    for k in runs:
        rows.append(f"| {k[0]} | {k[1]} | {sps[k]:.1f} | {sps[k] / sps[base]:.2f}x / {sps[k] / sps[amp]:.2f}x | "
                    f"{p50[k]:.0f} | {p99[k]:.0f} | {p50[base] / p50[k]:.2f}x / {p50[amp] / p50[k]:.2f}x |")
    # the spread between rounds: each round's own ratio (LeRobot's float32 step has drifted by a
    # fifth between runs of this bench on one machine, so one ratio alone says too much)
    per_round = {m: [np.median(r["step_s"]) / np.median(o["step_s"])   # same batch: the ratio of step times
                     for o, r in zip(runs[("ours", "auto")], runs[("LeRobot 0.4.4", m)])] for m in ("fp32", "amp")}
    rows += ["", "Training, ours `auto` against LeRobot, round by round: "
             + "; ".join(f"{m} {', '.join(f'{x:.2f}x' for x in v)}" for m, v in per_round.items()) + "."]
    rows += [""] + split_rows({k: v for k, v in runs.items() if k[0] == "ours" and "DDIM" not in k[1]})
    with tempfile.TemporaryDirectory() as work:   # the renders, both datasets and the runs: gone after
        e2e = end_to_end(peer_env, Path(work), 30 if quick else 60)
    return rows + [""] + e2e_rows(e2e) + [""]


def split_rows(runs: dict[tuple[str, str], list[dict]]) -> list[str]:
    """Where our training step's time goes, in float32 and in bf16, medians over the rounds."""
    kinds = [*COMPUTE, "the rest"]
    med = {k: {c: float(np.median([r["split"][c] for r in v])) for c in kinds} for k, v in runs.items()}
    rows = ["Where our training step's time goes (torch's profiler, seconds per step, medians over the rounds; "
            "the profiler's overhead is in the total):\n",
            "| precision | " + " | ".join(kinds) + " | total |", "|---|" + "---|" * (len(kinds) + 1)]
    for k, m in med.items():
        rows.append(f"| {k[1]} | " + " | ".join(f"{m[c]:.2f}" for c in kinds) + f" | {sum(m.values()):.2f} |")
    if len(med) == 2:
        (_, a), (_, b) = med.items()
        compute = [*COMPUTE]   # bf16 moves weight gradients from convolutions to products: compare their sum
        rows += ["", "Time in float32 over time in `auto`: the compute kernels "
                 f"{sum(a[c] for c in compute) / sum(b[c] for c in compute):.2f}x, the rest "
                 f"{a['the rest'] / b['the rest']:.2f}x, the step {sum(a.values()) / sum(b.values()):.2f}x."]
    return rows


def e2e_rows(e2e: dict[tuple[str, str], tuple[float, float]]) -> list[str]:
    """The end-to-end table: ratios against LeRobot's faster loader setting in each precision."""
    best = {m: max(v[0] for k, v in e2e.items() if k[0] != "ours" and k[1].startswith(m)) for m in ("fp32", "amp")}
    rows = ["### End to end: each trainer on a dataset on disk, data loading included\n",
            "The same network and batch, trained the way a user runs each: `robot-learning train diffusion` on our "
            "zarr store (frames decoded and resized once, then collated from memory, in the training process), "
            "`lerobot-train` on a LeRobot dataset of the same frames that LeRobot recorded itself "
            "(`LeRobotDataset.create`: its AV1 video, each window's frames decoded by torchcodec in loader "
            "processes: its default 4, and 1). 600 steps of two 96x96 cameras at 10 Hz (the `ingest` benchmark's "
            "renders), crop 86x86 (our trainer's 90%) on both; the steady state after each trainer's first logging "
            "window. Ratios against LeRobot's faster loader setting in each precision.\n",
            "| trainer | precision | samples/s | vs LeRobot fp32 / amp | time waiting for batches |",
            "|---|---|---|---|---|"]
    for k, (v, wait) in e2e.items():
        rows.append(f"| {k[0]} | {k[1]} | {v:.1f} | {v / best['fp32']:.2f}x / {v / best['amp']:.2f}x | {wait:.0%} |")
    return rows


if __name__ == "__main__":
    print(json.dumps(ours(json.loads(sys.argv[1]))), flush=True)
