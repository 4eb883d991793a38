"""Training entry points (``robot-learning train ...``) and evaluation in the gymnasium env."""
