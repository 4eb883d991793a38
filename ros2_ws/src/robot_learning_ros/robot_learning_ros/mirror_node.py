"""mirror_node: the MuJoCo workcell following a live robot, rendered beside its real streams.

Subscribes ``/joint_states`` (and the gripper and any ``/sim/objects/<name>/pose``-style
object poses given in ``objects``) and poses the sim like the robot, kinematically; publishes
each camera of the calibration at ``rate`` on ``/mirror/<camera>/color/image_raw`` (with its
``camera_info``), the sim's fingertip taxels on ``/mirror/tactile/<finger>/taxels``, and the
sim's TCP on ``/mirror/ee_pose``: put them beside the robot's own in rviz or a recording and
what the sim gets wrong (a camera's mounting, the model's geometry) is in plain view. Replaying
a recorded episode and the divergence report are ``robot-learning mirror replay``.

Contacts: the sim's contacts in the pose the robot is in go out on ``/mirror/contacts``
(visualization_msgs/MarkerArray, for rviz: a sphere at each contact point and an arrow along the
force the first body exerts on the second, ``CONTACT_ARROW_M_PER_N`` metres per newton, each
marker's ``ns`` naming the two bodies), and with ``contacts:=true`` (the default) MuJoCo draws
them into the mirror's camera images too: where the sim has the hand touching the table and the
robot's own camera shows it in the air, the model or the calibration is off.
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point, PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState
from visualization_msgs.msg import Marker, MarkerArray

from robot_learning.sim.mirror import Follower
from robot_learning_ros.msgs import LATEST_QOS, SENSOR_QOS, camera_info_msg, image_msg, pose_msg
from robot_learning_ros.runtime import init_ros, lenient_params, spin_main

CONTACT_ARROW_M_PER_N = 0.02   # an arrow's length per newton of contact force (a 0.1 kg part's weight: 2 cm)
CONTACT_ARROW_MAX_M = 0.3      # longer arrows are cut here (a hard press would cross the cell)


class MirrorNode(Node):
    def __init__(self):
        super().__init__("mirror")
        p = lenient_params(self)
        randomization = str(p("randomization", "none").value).strip()
        self.follower = Follower(str(p("task", "pick_place").value),
                                 None if randomization in ("", "none") else randomization)
        cell = self.follower.cell
        cams = str(p("cameras", "front,wrist").value)
        self.cameras = [c for c in (s.strip() for s in cams.split(",")) if c and c != "none"]
        for c in self.cameras:
            if c not in cell.calib.cameras:
                raise ValueError(f"camera '{c}' is not in {cell.calib.source}: choose from "
                                 f"{', '.join(cell.calib.cameras)}")
        self.objects = [o.strip() for o in str(p("objects", "").value).split(",") if o.strip()]
        self.latest: JointState | None = None
        self.gripper: float | None = None
        self.object_poses: dict[str, np.ndarray] = {}
        self.warned = False
        self.create_subscription(JointState, "/joint_states", self._on_js, LATEST_QOS)
        self.create_subscription(JointState, "/gripper/state", self._on_gripper, LATEST_QOS)
        for o in self.objects:
            self.create_subscription(PoseStamped, f"/sim/objects/{o}/pose", lambda m, o=o: self._on_obj(o, m),
                                     LATEST_QOS)
        self.pub_img = {c: self.create_publisher(Image, f"/mirror/{c}/color/image_raw", SENSOR_QOS)
                        for c in self.cameras}
        self.pub_info = {c: self.create_publisher(CameraInfo, f"/mirror/{c}/color/camera_info", SENSOR_QOS)
                         for c in self.cameras}
        self.pub_tac = {n: self.create_publisher(Image, f"/mirror/tactile/{n}/taxels", SENSOR_QOS)
                        for n in cell.tactile.names}
        self.pub_pose = self.create_publisher(PoseStamped, "/mirror/ee_pose", SENSOR_QOS)
        self.draw_contacts = bool(p("contacts", True).value)
        self.pub_contacts = self.create_publisher(MarkerArray, "/mirror/contacts", SENSOR_QOS)
        self.create_timer(1.0 / float(p("rate", 10.0).value), self._tick)
        self.get_logger().info(f"mirroring /joint_states into the sim; cameras {', '.join(self.cameras) or 'none'} "
                               "on /mirror/<camera>/color/image_raw")

    def _on_js(self, m: JointState) -> None:
        self.latest = m

    def _on_gripper(self, m: JointState) -> None:
        self.gripper = float(sum(m.position)) if m.position else None

    def _on_obj(self, name: str, m: PoseStamped) -> None:
        p, q = m.pose.position, m.pose.orientation
        self.object_poses[name] = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])

    def _tick(self) -> None:
        m = self.latest
        if m is None:
            return
        missing = self.follower.follow(list(m.name), list(m.position), self.gripper, self.object_poses)
        if missing:
            if not self.warned:
                self.get_logger().error(f"/joint_states lacks {', '.join(missing)}: is this the robot file's robot?")
                self.warned = True
            return
        cell, stamp = self.follower.cell, m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
        for c in self.cameras:
            cam = cell.calib.cameras[c]
            frame = cell.render(c, depth=False, contacts=self.draw_contacts)
            self.pub_img[c].publish(image_msg(frame.rgb, "rgb8", stamp, f"{c}_color_optical_frame"))
            self.pub_info[c].publish(camera_info_msg(cam.width, cam.height, cam.fovy_deg, stamp,
                                                     f"{c}_color_optical_frame"))
        for n, g in cell.tactile_grids().items():
            self.pub_tac[n].publish(image_msg(g, "32FC3", stamp, f"{n}_pad"))
        pos, quat = cell.tcp_pose()
        self.pub_pose.publish(pose_msg(pos, quat, stamp, cell.robot.base_frame))
        # MuJoCo's world frame: the robot description's root link ("world")
        self.pub_contacts.publish(self._contact_markers(m.header.stamp, "world"))

    def _contact_markers(self, stamp, frame: str) -> MarkerArray:
        """The contacts now, replacing the last message's (DELETEALL first)."""
        out = MarkerArray(markers=[Marker(action=Marker.DELETEALL)])
        for i, c in enumerate(self.follower.contacts()):
            ns = f"{c.body1}/{c.body2}"
            sphere = Marker(ns=ns, id=2 * i, type=Marker.SPHERE, action=Marker.ADD)
            arrow = Marker(ns=ns, id=2 * i + 1, type=Marker.ARROW, action=Marker.ADD)
            for mk in (sphere, arrow):
                mk.header.stamp, mk.header.frame_id = stamp, frame
                mk.pose.orientation.w = 1.0
                mk.color.r, mk.color.g, mk.color.b, mk.color.a = 1.0, 0.3, 0.0, 0.9
            sphere.pose.position.x, sphere.pose.position.y, sphere.pose.position.z = (float(v) for v in c.position)
            sphere.scale.x = sphere.scale.y = sphere.scale.z = 0.008
            vec = c.force * CONTACT_ARROW_M_PER_N
            length = float(np.linalg.norm(vec))
            tip = c.position + (vec * CONTACT_ARROW_MAX_M / length if length > CONTACT_ARROW_MAX_M else vec)
            arrow.points = [Point(x=float(a), y=float(b), z=float(z)) for a, b, z in (c.position, tip)]
            arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.003, 0.006, 0.008  # shaft, head diameters; head length
            out.markers += [sphere, arrow]
        return out

    def close(self) -> None:
        self.follower.close()


def main(args=None) -> None:
    init_ros(args=args)
    node = MirrorNode()
    spin_main(node, on_shutdown=node.close)


if __name__ == "__main__":
    main()
