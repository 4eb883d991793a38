"""Datasets: crash-safe zarr v3 stores of multi-rate robot streams plus the control-rate step table."""
