"""Relative paths on the command line: from the working directory, as a shell user expects,
with the checkout's own configuration files found from anywhere."""

from __future__ import annotations

from robot_learning.paths import project_root, resolve


def test_relative_paths_read_from_the_working_directory_then_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    assert resolve("runs/x") == tmp_path / "runs" / "x"                       # what `train --out runs/x` wrote here
    assert resolve("sim/workcell.yaml") == project_root() / "sim" / "workcell.yaml"   # the checkout's own file
    assert resolve("new.zarr") == tmp_path / "new.zarr"                       # a new output: here
    assert resolve(tmp_path / "runs") == tmp_path / "runs"
