"""``robot-learning train classifier``: the success classifier (``rl.classifier``) from labelled datasets.

Labels come from the datasets themselves: the last ``positive_steps`` steps of each episode
labelled a success are positives, every step of a failed episode and the early part of a
successful one are negatives, and the ``margin`` steps between the two are left out (there the
task is nearly done, and calling it either way teaches the classifier noise). Whole episodes
are held out for validation, so the reported accuracy is on episodes it never saw. Batches
are balanced (half positives), and images get the same random shift as the SAC critic.

``robot-learning train classifier --dataset demos.zarr --obs peg_pose.data,hole_pose.data``
writes ``checkpoint/`` and ``metrics.json`` under a new run directory.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from robot_learning.rl.replay import ObsSpec, episode_observations, obs_spec_from_dataset


@dataclass
class ClassifierTrainConfig:
    dataset: list[str] = field(default_factory=list)   # zarr datasets with success labels
    obs: list[str] = field(default_factory=list)       # state keys (step-table observations)
    images: list[str] = field(default_factory=list)    # camera streams
    image_size: list[int] = field(default_factory=lambda: [64, 64])
    positive_steps: int = 5        # the last steps of a successful episode that count as success
    margin: int = 10               # steps before those, left out
    val_every: int = 5             # every n-th episode is held out
    steps: int = 2000
    batch_size: int = 256
    lr: float = 3e-4
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    threshold: float = 0.5
    seed: int = 0
    out: str = "runs"


def label_episode(n: int, success: bool, positive_steps: int, margin: int) -> np.ndarray:
    """Per step: 1 success, 0 not yet, -1 left out."""
    y = np.zeros(n, np.int8)
    if success:
        y[max(0, n - positive_steps):] = 1
        y[max(0, n - positive_steps - margin):max(0, n - positive_steps)] = -1
    return y


def labelled_frames(datasets: list, spec: ObsSpec, positive_steps: int, margin: int, val_every: int,
                    progress: bool = False) -> tuple[dict, dict]:
    """(train, validation) arrays: ``state``, each camera, ``label``; whole episodes are held out."""
    from tqdm import tqdm

    parts: dict[str, list[dict]] = {"train": [], "val": []}
    k = 0
    for ds in datasets:
        for i in tqdm(ds.indices, desc=f"frames from {Path(ds.path).name}", unit="ep", disable=not progress):
            ep = ds.episode(i)
            if not ep.n_steps or ep.meta.get("success") is None:
                continue  # unlabelled: neither a success nor a failure to learn from
            obs = episode_observations(ep, spec)
            y = label_episode(ep.n_steps, bool(ep.meta["success"]), positive_steps, margin)
            keep = y >= 0
            parts["val" if val_every and k % val_every == val_every - 1 else "train"].append(
                {**{key: v[keep] for key, v in obs.items()}, "label": y[keep]})
            k += 1
    out = []
    for name in ("train", "val"):
        rows = parts[name]
        out.append({key: np.concatenate([r[key] for r in rows]) for key in rows[0]} if rows else {})
    if not out[0] or not out[0]["label"].any() or out[0]["label"].all():
        raise SystemExit("train classifier: the datasets need frames of both kinds: episodes labelled a success "
                         "and others (failures, or successes longer than positive_steps + margin); label episodes "
                         "with the teleop device's success/failure buttons when recording")
    return out[0], out[1]


def _batch(data: dict, rows: np.ndarray) -> dict:
    import torch

    return {k: torch.as_tensor(v[rows]) for k, v in data.items() if k != "label"}


def scores(model, data: dict, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall and positives/negatives counted on ``data``."""
    import torch

    if not data:
        return {}
    with torch.no_grad():
        p = np.concatenate([torch.sigmoid(model(_batch(data, np.arange(i, min(i + 1024, len(data["label"])))))).numpy()
                            for i in range(0, len(data["label"]), 1024)])
    y, yhat = data["label"] == 1, p >= threshold
    tp = float((y & yhat).sum())
    return {"accuracy": float((y == yhat).mean()), "precision": tp / max(1.0, float(yhat.sum())),
            "recall": tp / max(1.0, float(y.sum())), "positives": int(y.sum()), "negatives": int((~y).sum())}


def train_classifier(cfg: ClassifierTrainConfig, progress: bool = True) -> Path:
    """Trains and returns the run directory (``checkpoint/``, ``metrics.json``)."""
    import torch
    from torch.nn import functional as F
    from tqdm import tqdm

    from robot_learning.data.store import Dataset
    from robot_learning.rl.classifier import ClassifierConfig, SuccessClassifier

    if not cfg.dataset:
        raise SystemExit("train classifier: --dataset is required (one or more, comma-separated)")
    if not cfg.obs and not cfg.images:
        raise SystemExit("train classifier: say what it looks at: --obs (state keys) and/or --images (cameras)")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    datasets = [Dataset(d) for d in cfg.dataset]
    try:
        spec = obs_spec_from_dataset(datasets[0], cfg.obs, cfg.images, tuple(cfg.image_size))
    except ValueError as e:
        raise SystemExit(f"train classifier: {e}") from None
    train, val = labelled_frames(datasets, spec, cfg.positive_steps, cfg.margin, cfg.val_every, progress)
    mcfg = ClassifierConfig(obs_keys=list(cfg.obs), obs_dim=spec.state_dim, image_keys=list(cfg.images),
                            image_size=list(cfg.image_size), hidden=list(cfg.hidden), threshold=cfg.threshold)
    model = SuccessClassifier(mcfg)
    if spec.state_dim:
        model.encoder.set_normalization(train["state"].mean(0), train["state"].std(0))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    pos, neg = np.flatnonzero(train["label"] == 1), np.flatnonzero(train["label"] == 0)
    half = cfg.batch_size // 2
    bar = tqdm(range(cfg.steps), desc="train classifier", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        rows = np.r_[rng.choice(pos, half), rng.choice(neg, cfg.batch_size - half)]
        target = torch.as_tensor(train["label"][rows], dtype=torch.float32)
        loss = F.binary_cross_entropy_with_logits(model(_batch(train, rows), augment=bool(cfg.images)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    model.eval()
    run = Path(cfg.out) / f"classifier-{time.strftime('%Y%m%d-%H%M%S')}"
    metrics = {"train": scores(model, train, cfg.threshold), "val": scores(model, val, cfg.threshold),
               "final_loss": float(loss.detach())}
    recipe = datasets[0].episode(datasets[0].indices[0]).meta.get("recipe")
    model.save(run / "checkpoint", {"recipe": recipe, "datasets": [str(d) for d in cfg.dataset],
                                    "train_config": asdict(cfg), "metrics": metrics})
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1))
    v = metrics["val"] or metrics["train"]
    print(f"train classifier: {'held-out' if metrics['val'] else 'training'} accuracy {v['accuracy']:.1%}, "
          f"precision {v['precision']:.1%}, recall {v['recall']:.1%} ({v['positives']} success frames, "
          f"{v['negatives']} others); checkpoint {run / 'checkpoint'}", flush=True)
    return run
