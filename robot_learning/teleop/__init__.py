"""Teleoperation: device input to TCP twist and gripper commands, and the command mux."""
