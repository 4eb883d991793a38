"""Arm control: kinematics, the safety filter every command passes, the controller, backends."""
