"""What a policy's actions mean, and how the server turns them into arm commands.

Two action spaces, named in the checkpoint's config (``action_kind``):

- ``twist``: ``[vx vy vz wx wy wz, gripper]``, the TCP twist (base frame) and gripper closure the
  demonstrations sent; the server sends them as they are.
- ``tcp_pose``: ``[x y z qx qy qz qw, gripper]``, the TCP pose the arm should have reached one
  policy step after the action is due (for training: the recorded pose of the next step). The
  server turns the plan into a twist at the control rate, from the newest TCP pose it has, so
  the fast loop around the arm never waits for the policy.

Why both: a twist chunk is open loop, so any inference latency lets the arm run on towards
where the policy *saw* it; the cube-task policy trained on twists fell from 95% to 15% in the
env when its chunks arrived 0.2 s late (``docs/learning.md``). A pose plan says where to be
and when, which a late chunk still gets right.
"""

from __future__ import annotations

import numpy as np

from robot_learning.transforms import axis_angle_quat, orientation_error, quat_mul, wxyz_to_xyzw, xyzw_to_wxyz

ACTION_KINDS = ("twist", "tcp_pose")
TCP_POSE_KEY = "ee_pose.data"   # the observation a tcp_pose policy is tracked against
TWIST_DIMS = 6


def check_action_kind(kind: str) -> None:
    if kind not in ACTION_KINDS:
        raise ValueError(f"action kind '{kind}' is not one of {', '.join(ACTION_KINDS)}")


def pose_actions(tcp_pose: np.ndarray, recorded: np.ndarray) -> np.ndarray:
    """``tcp_pose`` actions of one episode, from its per-step TCP poses [T, 7] and the recorded
    twist actions [T, 6 + extra]: the next step's pose, then the extra columns (gripper).
    The last step's target is its own pose: the arm stops there."""
    nxt = np.concatenate([tcp_pose[1:], tcp_pose[-1:]]).astype(np.float32)
    return np.concatenate([nxt, recorded[:, TWIST_DIMS:]], axis=1)


def commanded_pose_actions(tcp_pose: np.ndarray, recorded: np.ndarray, dt: float) -> np.ndarray:
    """``tcp_pose`` actions of one episode as the demonstrator *commanded* them: each step's
    pose moved by its recorded twist for one step (``track_pose``'s inverse), then the extra
    columns. ``pose_actions`` gives where the arm got to instead, which lags the command
    wherever something resists it: pressing a peg into its hole, the reached pose says "slow
    down" where the command says "push on"."""
    tcp_pose = np.asarray(tcp_pose, np.float64)
    twist = np.asarray(recorded[:, :TWIST_DIMS], np.float64)
    out = np.empty((len(tcp_pose), 7))
    out[:, :3] = tcp_pose[:, :3] + twist[:, :3] * dt
    for i, (q, w) in enumerate(zip(tcp_pose[:, 3:7], twist[:, 3:])):
        angle = float(np.linalg.norm(w)) * dt
        turn = axis_angle_quat(w, angle) if angle > 1e-12 else np.array([1.0, 0.0, 0.0, 0.0])
        out[i, 3:] = wxyz_to_xyzw(quat_mul(turn, xyzw_to_wxyz(q)))
    return np.concatenate([out.astype(np.float32), recorded[:, TWIST_DIMS:]], axis=1)


def track_pose(target: np.ndarray, pose: np.ndarray, horizon: float) -> np.ndarray:
    """The twist [6] that brings the TCP from ``pose`` onto ``target`` (both x y z qx qy qz qw)
    in ``horizon`` seconds; the arm's safety filter bounds it like any other command."""
    v = (np.asarray(target[:3], np.float64) - pose[:3]) / horizon
    w = orientation_error(xyzw_to_wxyz(np.asarray(target[3:7], np.float64)), xyzw_to_wxyz(pose[3:7])) / horizon
    return np.concatenate([v, w])


def pose_command(action: np.ndarray, tcp_pose: np.ndarray, dt: float) -> np.ndarray:
    """The ``[twist(6), extra...]`` command for a due ``tcp_pose`` action, from the TCP pose now."""
    return np.concatenate([track_pose(action[:7], np.asarray(tcp_pose, np.float64), dt), action[7:]])
