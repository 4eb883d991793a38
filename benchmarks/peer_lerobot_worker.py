"""Runs inside LeRobot's own environment (``scripts/lerobot_peer_env.sh``), never in the project's:
LeRobot's diffusion policy at the network ``benchmarks/peer.py`` compares at, timed the way its
trainer steps (autocast when ``amp``, forward, backward, clipping, optimizer) and the way it
samples a chunk (``generate_actions``); or (``"mode": "build"``) writes the end-to-end comparison's
frames as a LeRobot dataset the way LeRobot records one (``LeRobotDataset.create``, ``add_frame``,
``save_episode``: its own video encoding), which its own ``lerobot-train`` then trains on. Prints one
JSON line. Imports nothing of robot_learning."""

from __future__ import annotations

import json
import sys
import time

import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

CAMERAS = ["observation.images.front", "observation.images.wrist"]


def main(args: dict) -> dict:
    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    feats = {"observation.state": PolicyFeature(FeatureType.STATE, (args["state_dim"],)),
             **{c: PolicyFeature(FeatureType.VISUAL, (3, args["image"], args["image"])) for c in CAMERAS}}
    cfg = DiffusionConfig(input_features=feats,
                          output_features={"action": PolicyFeature(FeatureType.ACTION, (args["action_dim"],))},
                          n_obs_steps=2, horizon=16, n_action_steps=8, crop_shape=(args["crop"], args["crop"]),
                          down_dims=tuple(args["down_dims"]), noise_scheduler_type="DDIM",
                          num_inference_steps=args["inference_steps"], device="cpu")
    policy = DiffusionPolicy(cfg)
    b, to = args["batch"], 2
    batch = {"observation.state": torch.randn(b, to, args["state_dim"]),
             **{c: torch.rand(b, to, 3, args["image"], args["image"]) for c in CAMERAS},
             "action": torch.randn(b, 16, args["action_dim"]), "action_is_pad": torch.zeros(b, 16, dtype=torch.bool)}
    opt = torch.optim.Adam(policy.get_optim_params(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    step_s = []
    for i in range(args["train_steps"] + 1):
        t0 = time.perf_counter()
        policy.train()
        with torch.autocast("cpu", enabled=args["amp"]):
            loss, _ = policy.forward(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
        opt.step()
        opt.zero_grad()
        if i:  # the first step pays for torch's set-up
            step_s.append(time.perf_counter() - t0)
    policy.eval()
    window = {"observation.state": batch["observation.state"][:1],
              "observation.images": torch.stack([batch[c][:1] for c in CAMERAS], dim=-4)}
    infer_ms = []
    with torch.no_grad(), torch.autocast("cpu", enabled=args["amp"]):
        for i in range(args["infer_calls"] + 1):
            t0 = time.perf_counter()
            policy.diffusion.generate_actions(window)
            if i:
                infer_ms.append((time.perf_counter() - t0) * 1e3)
    n_params = sum(p.numel() for p in policy.parameters())
    return {"step_s": step_s, "infer_ms": infer_ms, "params": n_params, "torch": torch.__version__}


def build(args: dict) -> dict:
    """The frames, states and actions in ``args["npz"]`` (episodes split at ``ends``) as a LeRobot dataset."""
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    d = np.load(args["npz"])
    cams = [k for k in d.files if k.startswith("image/")]
    feats = {"observation.state": {"dtype": "float32", "shape": (d["state"].shape[1],), "names": None},
             "action": {"dtype": "float32", "shape": (d["action"].shape[1],), "names": None},
             **{f"observation.images.{k[6:]}": {"dtype": "video", "shape": d[k].shape[1:],
                                                "names": ["height", "width", "channels"]} for k in cams}}
    ds = LeRobotDataset.create(args["repo_id"], fps=args["fps"], features=feats, root=args["root"], use_videos=True)
    start = 0
    for end in d["ends"]:
        for i in range(start, int(end)):
            ds.add_frame({"observation.state": d["state"][i].astype(np.float32),
                          "action": d["action"][i].astype(np.float32), "task": "bench",
                          **{f"observation.images.{k[6:]}": d[k][i] for k in cams}})
        ds.save_episode()
        start = int(end)
    ds.finalize()
    return {"frames": int(d["ends"][-1]), "episodes": len(d["ends"])}


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    print(json.dumps(build(job) if job.get("mode") == "build" else main(job)), flush=True)
