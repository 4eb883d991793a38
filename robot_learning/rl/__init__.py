"""Off-policy RL beside the robot: replay buffers from datasets, actor and learner loops."""
