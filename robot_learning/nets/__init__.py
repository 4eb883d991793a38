"""Neural network building blocks written for this project (no pretrained weights are needed)."""
