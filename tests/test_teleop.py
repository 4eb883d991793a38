"""Device input to commands, and the mux's handovers."""

from __future__ import annotations

import numpy as np
import pytest

from robot_learning.config import ConfigError
from robot_learning.teleop.devices import (
    JoyTeleop,
    KeyboardAxes,
    deadband,
    load_teleop_config,
    spacemouse_hid_report,
)
from robot_learning.teleop.mux import CommandMux, MuxConfig


def test_deadband_is_continuous_and_keeps_full_scale():
    x = np.linspace(-1, 1, 2001)
    y = deadband(x, 0.1)
    assert np.all(y[np.abs(x) <= 0.1] == 0)
    assert y[-1] == pytest.approx(1.0) and y[0] == pytest.approx(-1.0)
    assert np.max(np.abs(np.diff(y))) < 0.01  # no step at the band's edge


def test_gamepad_axes_scale_and_deadman():
    cfg = load_teleop_config("hardware/teleop/gamepad.yaml")
    tp = JoyTeleop(cfg)
    axes = [0.0] * 8
    axes[1] = 1.0    # left stick up: +x
    axes[3] = -0.5   # right stick: yaw
    buttons = [0] * 11
    out = tp.update(axes, buttons)
    assert not out.engaged and np.all(out.twist == 0)  # dead-man released: nothing moves
    buttons[4] = 1
    out = tp.update(axes, buttons)
    assert out.engaged
    assert out.twist[0] == pytest.approx(cfg.max_linear)
    yaw = deadband(np.array([-0.5]), cfg.deadband)[0] * cfg.max_angular
    assert out.twist[5] == pytest.approx(yaw)
    assert out.twist[1:5] == pytest.approx([0, 0, 0, 0])
    axes[1] = 0.05   # inside the deadband
    assert tp.update(axes, buttons).twist[0] == 0
    buttons[4] = 0
    assert not tp.update(axes, buttons).engaged


def test_gamepad_gripper_and_episode_events_fire_once_per_press():
    tp = JoyTeleop(load_teleop_config("hardware/teleop/gamepad.yaml"))
    b = [0] * 11
    b[0] = 1  # A closes
    out = tp.update([0.0] * 8, b)
    assert out.gripper == 1.0
    b[0], b[1] = 0, 1  # B opens
    assert tp.update([0.0] * 8, b).gripper == 0.0
    b = [0] * 11
    b[7] = 1  # start: stop the episode as a success
    assert tp.update([0.0] * 8, b).events == ["stop_success"]
    assert tp.update([0.0] * 8, b).events == []  # held, not pressed again


def test_spacemouse_toggle_engage_and_gripper_toggle():
    tp = JoyTeleop(load_teleop_config("hardware/teleop/spacemouse.yaml"))
    axes = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert tp.update(axes, [0, 1]).engaged  # press right: engaged
    out = tp.update(axes, [0, 0])
    assert out.engaged and out.twist[2] > 0
    assert tp.update(axes, [1, 0]).gripper == 1.0  # left toggles the gripper
    tp.update(axes, [0, 0])
    assert tp.update(axes, [1, 0]).gripper == 0.0
    tp.update(axes, [0, 1])
    assert not tp.update(axes, [0, 0]).engaged  # right again: released


def test_keyboard_keys_act_while_repeating_then_stop():
    cfg = load_teleop_config("hardware/teleop/keyboard.yaml")
    kb, tp = KeyboardAxes(cfg), JoyTeleop(cfg)
    kb.press(" ", 0.0)
    out = tp.update(*kb.read(0.0))
    assert out.engaged
    kb.press("w", 0.2)
    kb.press("e", 0.2)
    out = tp.update(*kb.read(0.25))
    assert out.twist[0] == pytest.approx(cfg.max_linear) and out.twist[5] == pytest.approx(-cfg.max_angular)
    out = tp.update(*kb.read(0.6))  # no repeat for a while: the key is up
    assert np.all(out.twist == 0) and out.engaged


def test_spacemouse_hid_reports_to_axes_and_buttons():
    axes, buttons = [0.0] * 6, [0, 0]
    rep = bytes([1]) + np.array([350, -175, 350, 0, 0, -350], "<i2").tobytes()
    spacemouse_hid_report(rep, axes, buttons)
    assert axes == pytest.approx([1.0, 0.5, -1.0, 0.0, 0.0, 1.0])
    spacemouse_hid_report(bytes([2]) + np.array([350, 0, 0], "<i2").tobytes(), axes, buttons)
    assert axes[3:] == pytest.approx([1.0, 0.0, 0.0])
    spacemouse_hid_report(bytes([3, 0b10, 0, 0, 0]), axes, buttons)
    assert buttons == [0, 1]


def test_bad_teleop_config_is_a_clear_error(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("device: x\naxes: {forward: {axis: 0}}\n")
    with pytest.raises(ConfigError, match="unknown twist axis 'forward'"):
        load_teleop_config(str(f))


def _max_jerk(outs, dt):
    tw = np.array([o.twist for o in outs])
    return np.max(np.linalg.norm(np.diff(tw[:, :3], axis=0), axis=1)) / dt


def test_mux_operator_wins_and_handover_has_no_jump():
    cfg = MuxConfig()
    mux = CommandMux(cfg)
    dt, outs, t = 0.01, [], 0.0
    policy = np.array([0.1, 0.0, 0.0, 0, 0, 0])
    teleop = np.array([-0.1, 0.05, 0.0, 0, 0, 0])
    for k in range(300):
        t = k * dt
        mux.set_policy(policy, 0.0, t)
        mux.set_teleop(teleop, 1.0, t)
        mux.set_engaged(100 <= k < 200)
        outs.append(mux.step(t))
    src = [o.source for o in outs]
    assert src[50] == "policy" and src[150] == "teleop" and src[250] == "policy"
    assert all(o.intervention == (o.source == "teleop") for o in outs)  # a policy is running throughout
    # bounded acceleration through both handovers: never a jump in commanded velocity
    assert _max_jerk(outs, dt) <= cfg.max_linear_acc + 1e-6
    assert outs[199].twist[:3] == pytest.approx(teleop[:3])  # it does reach the operator's command
    assert outs[299].twist[:3] == pytest.approx(policy[:3])
    grips = np.array([o.gripper for o in outs])
    assert np.max(np.abs(np.diff(grips))) <= cfg.gripper_rate * dt + 1e-9


def test_mux_holds_when_commands_stop_and_ignores_nan():
    mux = CommandMux()
    mux.set_policy(np.array([0.1, 0, 0, 0, 0, 0]), None, 0.0)
    assert mux.step(0.0).source == "policy"
    mux.set_policy(np.array([np.nan] * 6), None, 0.1)  # refused: the last good command ages out
    outs = [mux.step(0.3 + 0.01 * k) for k in range(30)]
    assert outs[0].source == "hold"
    assert np.all(outs[-1].twist == 0) and not outs[-1].moving
    assert not any(o.intervention for o in outs)


def test_teleop_alone_is_not_an_intervention():
    mux = CommandMux()
    mux.set_engaged(True)
    mux.set_teleop(np.array([0.05, 0, 0, 0, 0, 0]), 0.5, 0.0)
    out = mux.step(0.0)
    assert out.source == "teleop" and not out.intervention


def test_mux_with_a_plan_driven_policy_sends_no_twist_and_counts_the_takeover():
    """A policy that sends timed plans is in control while its newest plan is fresh; no twist
    goes out then (it would preempt the plan at the arm); the operator still wins, and that is
    an intervention."""
    mux = CommandMux()
    outs = []
    for k in range(300):
        t = k * 0.01
        if k % 40 == 0:
            mux.set_policy_plan(t)
        mux.set_policy(None, 0.0, t)
        mux.set_teleop(np.array([0.05, 0, 0, 0, 0, 0]), 1.0, t)
        mux.set_engaged(100 <= k < 200)
        outs.append(mux.step(t))
    assert all(o.source == "policy" and not o.moving for o in outs[:100])
    assert all(o.source == "teleop" and o.intervention and o.moving for o in outs[100:200])
    # released: the next plan takes the arm (the arm blends it in from its current motion)
    assert outs[299].source == "policy" and not outs[299].moving
    mux2 = CommandMux()
    mux2.set_policy_plan(0.0)
    assert mux2.step(0.5).source == "policy" and mux2.step(2.0).source == "hold"  # a plan ages out


def test_a_stopped_plan_policy_s_gripper_is_not_sent_on():
    """A paused policy's plan keeps it the source for policy_alive, but its last gripper
    command goes stale like a twist: the mux must not keep closing the gripper after the sim
    (or an operator) has opened it for the next episode."""
    mux = CommandMux()
    for k in range(100):
        t = k * 0.01
        if k % 40 == 0:
            mux.set_policy_plan(t)
        mux.set_policy(None, 1.0, t)   # closed, while running
        assert mux.step(t).gripper is not None
    t_last = 0.99
    late = [(t, mux.step(t)) for t in t_last + 0.01 * np.arange(1, 60)]
    assert all(o.source == "policy" for _, o in late)   # the plan is still fresh...
    stale = [o.gripper for t, o in late if t > t_last + mux.cfg.command_timeout + 1e-6]
    assert stale and all(g is None for g in stale), stale   # ...its gripper command is not


@pytest.mark.graph
def test_the_teleop_node_publishes_each_button_press_for_the_rl_actor(tmp_path):
    """The operator's success and failure buttons reach whoever listens on /teleop/event (the RL
    actor ends its episode on them) once per press; with ``label_recorder:=false`` they leave
    the recordings to the node that owns them."""
    import time

    from robot_learning_ros.client import GraphClient
    from sensor_msgs.msg import Joy
    from std_msgs.msg import String
    from test_rl_actor_learner import start, wait_until

    log = (tmp_path / "teleop.log").open("w")
    node = start("teleop_node", log, device="gamepad", label_recorder="false")
    client = GraphClient("buttons")
    try:
        client.subscribe("/teleop/event", String, transform=lambda m: m.data)
        joy = client.publisher("/joy", Joy)

        def press(button: int) -> None:
            for down in (1, 0, 0):   # pressed, released (and the release seen again)
                buttons = [0] * 11
                buttons[button] = down
                joy.publish(Joy(axes=[0.0] * 8, buttons=buttons))
                time.sleep(0.1)

        wait_until(lambda: client.node.count_subscribers("/joy") > 0 and
                   client.node.count_publishers("/teleop/event") > 0, "the teleop node", 30)
        time.sleep(0.5)
        press(7)   # start: success
        press(6)   # back: failure
        assert client.wait_for("/teleop/event", 2, timeout=10) == ["stop_success", "stop_failure"]
        time.sleep(0.5)
        assert len(client.msgs["/teleop/event"]) == 2
    finally:
        client.close()
        node.terminate()
        node.wait(timeout=15)
        log.close()
    text = (tmp_path / "teleop.log").read_text()
    assert "stop_success pressed" in text and "recorder is not running" not in text, text


def test_mux_gripper_starts_afresh_after_nobody_commands_it():
    """An episode ends with the gripper closed, the policy pauses, the scene is reset with the
    gripper open: the next episode's "open" goes out as "open", not as a slew from the old
    "closed" that would shut the hand first (a plan keeps the policy in control meanwhile)."""
    for plan in (True, False):
        mux = CommandMux()
        for k in range(50):   # a grasp: closed
            if plan:
                mux.set_policy_plan(k * 0.02)
            mux.set_policy(None if plan else np.zeros(6), 1.0, k * 0.02)
            assert mux.step(k * 0.02).gripper == 1.0
        t = 49 * 0.02 + 0.6   # paused for 0.6 s: a plan is still fresh, its gripper is not
        quiet = mux.step(t)
        assert quiet.gripper is None and quiet.source == ("policy" if plan else "hold")
        t += 0.1
        if plan:
            mux.set_policy_plan(t)
        mux.set_policy(None if plan else np.zeros(6), 0.0, t)
        assert mux.step(t).gripper == 0.0
        assert mux.step(t + 0.02).gripper == 0.0
