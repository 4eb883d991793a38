"""The MuJoCo workcell: model, tasks, sensors, the runtime that steps it, the gym env."""
