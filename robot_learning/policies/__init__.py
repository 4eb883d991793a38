"""Policies: the diffusion policy, its normalizer and its safe checkpoint format."""
