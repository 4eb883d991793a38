import numpy as np
import pytest
import yaml

from robot_learning.config import ConfigError, load_calibration, load_robot
from robot_learning.control.kinematics import Kinematics

pytestmark = pytest.mark.compute  # no ROS, no timing: `make test` runs it beside the rest


def test_panda_config_loads_with_limits_and_home():
    r = load_robot()
    assert r.dof == 7 and len(r.joint_names) == 7
    assert np.all(r.limits.q_lower < r.home) and np.all(r.home < r.limits.q_upper)
    assert r.limits.qd_max[0] == pytest.approx(2.175)


def test_home_tcp_is_above_the_table_pointing_down():
    r = load_robot()
    pos, quat = Kinematics(r).fk(r.home)
    assert 0.25 < pos[0] < 0.4 and abs(pos[1]) < 1e-6 and 0.3 < pos[2] < 0.6
    assert abs(abs(quat[1]) - 1.0) < 1e-3  # 180 deg about x: TCP z points down


def test_bad_robot_config_names_the_file_and_key(tmp_path):
    src = yaml.safe_load(open(load_robot().source))
    del src["limits"]["velocity"]
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(src))
    with pytest.raises(ConfigError, match="velocity"):
        load_robot(p)


def test_home_outside_limits_is_refused(tmp_path):
    src = yaml.safe_load(open(load_robot().source))
    src["home"][3] = 0.5  # joint 4 must stay negative
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(src))
    with pytest.raises(ConfigError, match="home"):
        load_robot(p)


def test_calibration_has_both_cameras_with_unit_quaternions():
    c = load_calibration()
    assert set(c.cameras) == {"front", "wrist"}
    for cam in c.cameras.values():
        assert np.linalg.norm(cam.rotation_xyzw) == pytest.approx(1.0)
        assert (cam.width, cam.height) == (640, 480)
