"""The robot as a URDF, from the same robot file and calibration the MJCF is generated from.

One description, three readers: the controller's kinematics, the sim's MJCF
(``robot_learning.sim.model``) and this URDF, for rviz, MoveIt and robot_state_publisher (which
turns it and /joint_states into /tf). It names the frames the nodes stamp their messages with:
the base frame, each joint's link, the hand, the TCP (``ee_frame``), the wrist F/T sensor, each camera's
``<camera>_color_optical_frame`` (as realsense-ros names them) and each tactile pad's
``<finger>_pad``. Geometry is kinematics, inertias and simple shapes: enough to see the arm in
rviz and to plan with; a vendor's meshes can replace the visuals without changing a frame.

``robot-learning urdf [--robot FILE] [--calibration FILE]`` prints it; the arm and sim nodes
publish it on /robot_description (std_msgs/String, latched), as robot_state_publisher does.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

import numpy as np

from robot_learning.config import Calibration, RobotConfig

PAD_Z_SIGN = {"left": 1, "right": -1}  # which way each finger slides (the sim's convention)
FT_FRAME = "ft_sensor"  # the wrist force/torque sensor, at the hand's mounting face (/arm/wrench)


def rpy_from_quat_xyzw(q: np.ndarray) -> np.ndarray:
    """URDF's fixed-axis roll, pitch, yaw (R = Rz(yaw) Ry(pitch) Rx(roll)) of a unit quaternion."""
    x, y, z, w = np.asarray(q, float) / np.linalg.norm(q)
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.array([roll, pitch, yaw])


def _v(values) -> str:
    return " ".join(f"{float(x):.9g}" for x in values)


def _origin(xyz=(0.0, 0.0, 0.0), rpy=(0.0, 0.0, 0.0)) -> str:
    return f'<origin xyz="{_v(xyz)}" rpy="{_v(rpy)}"/>'


def _link(name: str, mass: float | None = None, com=(0, 0, 0), inertia=(0, 0, 0), radius: float = 0.0) -> str:
    parts = [f"<link name={quoteattr(name)}>"]
    if mass:
        ixx, iyy, izz = inertia
        parts.append(f'<inertial>{_origin(com)}<mass value="{mass:.9g}"/>'
                     f'<inertia ixx="{ixx:.9g}" ixy="0" ixz="0" iyy="{iyy:.9g}" iyz="0" izz="{izz:.9g}"/></inertial>')
    if radius:
        parts.append(f'<visual><geometry><sphere radius="{radius:.4g}"/></geometry></visual>')
    parts.append("</link>")
    return "".join(parts)


def _joint(name: str, kind: str, parent: str, child: str, origin: str, axis=None, limit: str = "") -> str:
    body = f"<parent link={quoteattr(parent)}/><child link={quoteattr(child)}/>{origin}"
    if axis is not None:
        body += f'<axis xyz="{_v(axis)}"/>'
    return f"<joint name={quoteattr(name)} type={quoteattr(kind)}>{body}{limit}</joint>"


def urdf(robot: RobotConfig, calib: Calibration | None = None) -> str:
    """The arm, hand, fingers, TCP, tactile pads and (with ``calib``) the cameras, as URDF text.

    Each modified-DH row (a, d, alpha) is a joint origin: rotate alpha about x, move a along x
    and d along the new z, then turn about z by the joint angle, which is the MJCF's chain too."""
    lim, g = robot.limits, robot.gripper
    out = [f"<robot name={quoteattr(robot.name)}>", _link("world")]
    base_xyz = calib.robot_base_translation if calib is not None else np.zeros(3)
    out += [_link(robot.base_frame, radius=0.07),
            _joint(f"{robot.name}_world_joint", "fixed", "world", robot.base_frame, _origin(base_xyz))]
    parent = robot.base_frame
    for i, (a, d, alpha) in enumerate(robot.dh):
        child = f"{robot.name}_link{i + 1}"
        link = robot.links[i] if i < len(robot.links) else {}
        out.append(_link(child, link.get("mass"), link.get("com", (0, 0, 0)), link.get("inertia", (0, 0, 0)),
                         radius=0.06 if i < 4 else 0.045))
        xyz = (a, -np.sin(alpha) * d, np.cos(alpha) * d)
        limit = (f'<limit lower="{lim.q_lower[i]:.9g}" upper="{lim.q_upper[i]:.9g}" '
                 f'velocity="{lim.qd_max[i]:.9g}" effort="{robot.effort[i]:.9g}"/>')
        origin = _origin(xyz, (alpha, 0, 0))
        out.append(_joint(robot.joint_names[i], "revolute", parent, child, origin, (0, 0, 1), limit))
        parent = child
    flange = f"{robot.name}_flange"
    out += [_link(flange), _joint(f"{robot.name}_flange_joint", "fixed", parent, flange,
                                  _origin((0, 0, robot.flange_offset)))]
    out += [_link(g.name, g.hand_mass, (0, 0, 0.04), (0.0025, 0.0005, 0.0023), radius=0.04),
            _joint(f"{g.name}_joint", "fixed", flange, g.name, _origin(rpy=(0, 0, robot.hand_yaw)))]
    out += [_link(robot.ee_frame), _joint(f"{robot.ee_frame}_joint", "fixed", g.name, robot.ee_frame,
                                          _origin((0, 0, robot.tcp_offset))),
            _link(FT_FRAME), _joint(f"{FT_FRAME}_joint", "fixed", g.name, FT_FRAME, _origin())]
    for (side, sign), joint in zip(PAD_Z_SIGN.items(), g.joint_names):
        finger, pad = f"{g.name}_{side}_finger", f"{side}_finger_pad"
        limit = f'<limit lower="0" upper="{g.max_opening / 2:.9g}" velocity="0.2" effort="{g.max_force:.9g}"/>'
        out += [_link(finger, g.finger_mass, (0, sign * 0.01, robot.tcp_offset - 0.02), (2e-6, 2e-6, 1e-6)),
                _joint(joint, "prismatic", g.name, finger, _origin(), (0, sign, 0), limit),
                _link(pad), _joint(f"{pad}_joint", "fixed", finger, pad,
                                   _origin((0, 0, robot.tcp_offset), (-sign * np.pi / 2, 0, 0)))]
    for cam in (calib.cameras.values() if calib is not None else ()):
        frame = f"{cam.name}_color_optical_frame"
        cam_parent = {"world": "world", "hand": g.name}.get(cam.parent, cam.parent)
        out += [_link(frame), _joint(f"{frame}_joint", "fixed", cam_parent, frame,
                                     _origin(cam.translation, rpy_from_quat_xyzw(cam.rotation_xyzw)))]
    out.append("</robot>")
    return "\n".join(out) + "\n"
