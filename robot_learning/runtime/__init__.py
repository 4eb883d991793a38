"""The real-time policy runtime: observation buffers, chunk scheduling, the server engine, the policy interface."""
