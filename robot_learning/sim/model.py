"""MJCF for the workcell, generated from the files under hardware/, calibration/ and sim/.

Generating the XML (rather than keeping a hand-written copy) is what makes the config the
single source of truth: change a joint limit, the home pose or a camera's calibrated pose
in its YAML file and the sim, the controller and the safety filter all follow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robot_learning.config import Calibration, RobotConfig
from robot_learning.transforms import OPTICAL_TO_MUJOCO_CAM, axis_angle_quat, quat_mul, xyzw_to_wxyz

# Collision classes: objects/table collide with everything, robot parts only with them.
WORLD_COLLISION = 'contype="1" conaffinity="3"'
ROBOT_COLLISION = 'contype="2" conaffinity="1"'
VISUAL_ONLY = 'contype="0" conaffinity="0" group="1"'

TCP_SITE = "tcp"
FT_SITE = "ft_sensor"
PAD_GEOMS = {"left_finger": "left_finger_pad", "right_finger": "right_finger_pad"}
PAD_HALF = (0.009, 0.0035, 0.009)  # pad box half extents: width, thickness, length


def _f(v) -> str:
    return " ".join(f"{float(x):.6g}" for x in np.ravel(v))


def _link_geoms(i: int, robot: RobotConfig) -> str:
    """A capsule from this joint's frame to the next one: enough to see and to render."""
    if i + 1 < robot.dof:
        a, d, alpha = robot.dh[i + 1]
        end = np.array([a, -np.sin(alpha) * d, np.cos(alpha) * d])
    else:
        end = np.array([0.0, 0.0, robot.flange_offset])
    radius = 0.06 if i < 4 else 0.045
    if np.linalg.norm(end) < 1e-6:
        return f'<geom type="sphere" size="{radius}" rgba="0.92 0.92 0.92 1" {VISUAL_ONLY}/>'
    return (
        f'<geom type="capsule" fromto="0 0 0 {_f(end)}" size="{radius}" '
        f'rgba="0.92 0.92 0.92 1" {VISUAL_ONLY}/>'
        f'<geom type="sphere" size="{radius * 1.05:.4g}" rgba="0.25 0.25 0.28 1" {VISUAL_ONLY}/>'
    )


def _camera_xml(cam, body: str) -> str:
    q = quat_mul(xyzw_to_wxyz(cam.rotation_xyzw), OPTICAL_TO_MUJOCO_CAM)
    return (
        f'<camera name="{cam.name}" pos="{_f(cam.translation)}" quat="{_f(q)}" '
        f'fovy="{cam.fovy_deg}"/>'
    )


def gripper_xml(robot: RobotConfig, calib: Calibration | None) -> str:
    """Hand, two slide fingers with tactile pads, TCP and wrist F/T sites, wrist camera."""
    g = robot.gripper
    half_open = g.max_opening / 2
    hand_q = axis_angle_quat([0, 0, 1], robot.hand_yaw)
    pad_z = robot.tcp_offset
    fingers = []
    for side, sign, joint in (("left", 1, g.joint_names[0]), ("right", -1, g.joint_names[1])):
        pad_y = sign * PAD_HALF[1]
        fingers.append(
            f'<body name="{side}_finger" pos="0 0 0">'
            f'<inertial pos="0 {sign * 0.01} {pad_z - 0.02}" mass="{g.finger_mass}" diaginertia="2e-6 2e-6 1e-6"/>'
            f'<joint name="{joint}" type="slide" axis="0 {sign} 0" range="0 {half_open}" damping="2" armature="0.01"/>'
            f'<geom type="box" pos="0 {sign * (PAD_HALF[1] * 2 + 0.006)} {pad_z - 0.03}" size="0.01 0.006 0.03" '
            f'rgba="0.85 0.85 0.85 1" {ROBOT_COLLISION} friction="1 0.01 0.001"/>'
            f'<geom name="{PAD_GEOMS[side + "_finger"]}" type="box" pos="0 {pad_y} {pad_z}" '
            f'size="{_f(PAD_HALF)}" rgba="0.15 0.15 0.15 1" {ROBOT_COLLISION} '
            f'friction="1.5 0.02 0.002" condim="4" solref="0.004 1"/>'
            f'<site name="{side}_pad_site" pos="0 0 {pad_z}" quat="{_f(axis_angle_quat([1, 0, 0], -sign * np.pi / 2))}" size="0.001"/>'
            f"</body>"
        )
    wrist = ""
    if calib and "wrist" in calib.cameras and calib.cameras["wrist"].parent == "hand":
        wrist = _camera_xml(calib.cameras["wrist"], "hand")
    return (
        f'<body name="hand" pos="0 0 {robot.flange_offset}" quat="{_f(hand_q)}" gravcomp="1">'
        f'<inertial pos="0 0 0.04" mass="{g.hand_mass}" diaginertia="0.0025 0.0005 0.0023"/>'
        f'<site name="{FT_SITE}" pos="0 0 0" size="0.005"/>'
        f'<geom type="box" pos="0 0 0.04" size="0.025 0.1 0.025" rgba="0.92 0.92 0.92 1" {ROBOT_COLLISION}/>'
        f'<geom type="cylinder" pos="0 0 0.008" size="0.04 0.008" rgba="0.25 0.25 0.28 1" {VISUAL_ONLY}/>'
        f'<site name="{TCP_SITE}" pos="0 0 {robot.tcp_offset}" size="0.004" rgba="1 0 0 0.5"/>'
        f"{wrist}{''.join(fingers)}</body>"
    )


def arm_xml(robot: RobotConfig, calib: Calibration | None = None) -> str:
    """The arm's kinematic tree from the modified DH table, ending in the gripper."""
    xml = gripper_xml(robot, calib)
    for i in reversed(range(robot.dof)):
        a, d, alpha = robot.dh[i]
        pos = np.array([a, -np.sin(alpha) * d, np.cos(alpha) * d])
        quat = axis_angle_quat([1, 0, 0], alpha)
        link = robot.links[i]
        lo, hi = robot.limits.q_lower[i], robot.limits.q_upper[i]
        xml = (
            f'<body name="{robot.name}_link{i + 1}" pos="{_f(pos)}" quat="{_f(quat)}" gravcomp="1">'
            f'<inertial pos="{_f(link["com"])}" mass="{link["mass"]}" diaginertia="{_f(link["inertia"])}"/>'
            f'<joint name="{robot.joint_names[i]}" axis="0 0 1" range="{lo} {hi}" '
            f'damping="{robot.joint_damping}" armature="0.1"/>'
            f"{_link_geoms(i, robot)}{xml}</body>"
        )
    base = (
        f'<geom type="cylinder" pos="0 0 0.05" size="0.07 0.05" rgba="0.92 0.92 0.92 1" {VISUAL_ONLY}/>'
        f'<geom type="capsule" fromto="0 0 0.05 0 0 {robot.dh[0][1]}" size="0.06" rgba="0.92 0.92 0.92 1" {VISUAL_ONLY}/>'
    )
    return f'<body name="{robot.base_frame}" pos="0 0 0">{base}{xml}</body>'


def actuators_xml(robot: RobotConfig) -> str:
    """Joint position servos (the robot's own joint controller) and the gripper drive."""
    acts = []
    for i, j in enumerate(robot.joint_names):
        lo, hi = robot.limits.q_lower[i], robot.limits.q_upper[i]
        e = robot.effort[i]
        acts.append(
            f'<position name="{j}_servo" joint="{j}" kp="{robot.servo_kp[i]}" kv="{robot.servo_kv[i]}" '
            f'ctrlrange="{lo} {hi}" forcerange="{-e} {e}"/>'
        )
    g = robot.gripper
    acts.append(
        f'<position name="gripper_drive" joint="{g.joint_names[0]}" kp="3000" kv="40" '
        f'ctrlrange="0 {g.max_opening / 2}" forcerange="{-g.max_force} {g.max_force}"/>'
    )
    return "<actuator>" + "".join(acts) + "</actuator>"


def sensors_xml() -> str:
    return (
        f'<sensor><force name="wrist_force" site="{FT_SITE}"/>'
        f'<torque name="wrist_torque" site="{FT_SITE}"/></sensor>'
    )


def robot_only_xml(robot: RobotConfig) -> str:
    """The arm alone: the kinematic model the controller uses, whatever the backend."""
    g = robot.gripper
    return (
        f'<mujoco model="{robot.name}_kinematics"><compiler angle="radian"/>'
        f"<worldbody>{arm_xml(robot)}</worldbody>"
        f'<equality><joint joint1="{g.joint_names[0]}" joint2="{g.joint_names[1]}"/></equality>'
        f"</mujoco>"
    )


def end_stop_timeconst(workcell: dict[str, Any]) -> float:
    """The joints' end stops are critically damped springs of this time constant (MuJoCo's
    ``solreflimit``): two physics steps, as stiff as the solver allows. A joint arriving at
    speed v sinks into one by about v times this over e."""
    return 2 * float(workcell["physics_dt"])


def workcell_xml(
    robot: RobotConfig,
    calib: Calibration,
    workcell: dict[str, Any],
    task_xml: str = "",
    extra_assets: str = "",
) -> str:
    """The full scene: table, arm with gripper, cameras, lights and the task's objects.

    Joint ranges are end stops as stiff as the solver allows (``end_stop_timeconst``): with
    MuJoCo's default (20 ms) a hand pressed on the table pushed a wrist joint 10 mrad past its
    hard limit, where a real arm's stop gives a fraction of that."""
    g = robot.gripper
    tsize = np.asarray(workcell["table"]["size"], float)
    tc = workcell["table"]["center"]
    cams = "".join(_camera_xml(c, "world") for c in calib.cameras.values() if c.parent == "world")
    max_w = max([c.width for c in calib.cameras.values()] + [640])
    max_h = max([c.height for c in calib.cameras.values()] + [480])
    return f"""<mujoco model="workcell">
<compiler angle="radian" autolimits="true"/>
<option timestep="{workcell["physics_dt"]}" integrator="implicit" cone="elliptic" impratio="10"/>
<default><joint solreflimit="{end_stop_timeconst(workcell)} 1" solimplimit="0.99 0.999 0.001"/></default>
<visual><global offwidth="{max_w}" offheight="{max_h}"/><quality offsamples="0" shadowsize="0"/>
<headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5"/><map znear="0.01"/></visual>
<asset>
<texture name="floor" type="2d" builtin="checker" rgb1="0.3 0.32 0.35" rgb2="0.25 0.27 0.3" width="256" height="256"/>
<material name="floor" texture="floor" texrepeat="8 8"/>
<texture name="wood" type="2d" builtin="flat" rgb1="0.72 0.6 0.45" width="64" height="64"/>
<material name="table" texture="wood"/>
{extra_assets}
</asset>
<worldbody>
<light directional="true" pos="0.5 0 3" dir="0 0 -1" castshadow="false" diffuse="0.6 0.6 0.6"/>
<geom name="floor" type="plane" pos="0 0 {-0.75}" size="3 3 0.1" material="floor" {VISUAL_ONLY}/>
<geom name="table" type="box" pos="{tc[0]} {tc[1]} {-tsize[2]}" size="{_f(tsize)}" material="table" {WORLD_COLLISION} friction="0.8 0.01 0.001"/>
{cams}
{arm_xml(robot, calib)}
{task_xml}
</worldbody>
<equality><joint joint1="{g.joint_names[0]}" joint2="{g.joint_names[1]}" solref="0.005 1"/></equality>
<contact><exclude body1="left_finger" body2="right_finger"/></contact>
{actuators_xml(robot)}
{sensors_xml()}
</mujoco>"""
