"""Fault injection on a real store: what `dataset validate`, `info` and `repair` say and do.

A store of three episodes is written by the project's own writer; each test damages a copy
(episode 1, or the store as a whole) the way a disk, a copy or a person does, then runs
the CLI. Every fault must be named (episode, array, chunk), come with what to do, exit
non-zero while it is there, never show a traceback, and `repair` must fix or drop it
without writing to the intact episodes.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_dataset import RECIPE, record_episode

from robot_learning.cli import main as cli_main
from robot_learning.data.repair import validate_store
from robot_learning.data.store import Dataset, DatasetError, DatasetWriter, discard_episodes

pytestmark = pytest.mark.compute  # no ROS, no timing: `make test` runs it beside the rest

CLI = [str(Path(sys.executable).parent / "robot-learning"), "dataset"]
EP = "episodes/000001"
POSITION = f"{EP}/streams/joint_states/position"


def write_store(path: Path) -> Path:
    w = DatasetWriter(path, RECIPE)
    for i in range(3):
        ep = w.start_episode({"task": "pick_place", "operator": "test"})
        record_episode(ep, t0=10.0 + 10 * i, seconds=1.0)   # 500 joint samples: one chunk
        ep.finish(success=bool(i))
    w.close()
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("pristine") / "d.zarr")


@pytest.fixture
def store(pristine, tmp_path) -> Path:
    shutil.copytree(pristine, tmp_path / "d.zarr")
    return tmp_path / "d.zarr"


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    r = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "ROBOT_LEARNING_HOME": os.getcwd()})
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    return r


def cli_in_process(capsys, *args: str | Path) -> tuple[int, str]:
    code = cli_main(["dataset", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out + out.err


def digests(path: Path, *parts: str) -> dict[str, str]:
    """sha256 of every file under the given parts of the store."""
    out = {}
    for part in parts:
        for f in sorted((path / part).rglob("*")) if (path / part).is_dir() else [path / part]:
            if f.is_file():
                out[str(f.relative_to(path))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


INTACT = ("episodes/000000", "episodes/000002")


def truncate(path: Path) -> None:
    f = path / POSITION / "c/0/0"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def flip(rel: str) -> Callable[[Path], None]:
    def inject(path: Path) -> None:
        f = path / rel
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x10
        f.write_bytes(bytes(data))
    return inject


def remove(rel: str) -> Callable[[Path], None]:
    return lambda path: shutil.rmtree(path / rel)


def overwrite(rel: str, content: bytes) -> Callable[[Path], None]:
    return lambda path: (path / rel).write_bytes(content)


def dir_to_file(rel: str) -> Callable[[Path], None]:
    """A directory that cannot be entered, for root too (chmod 000 does not stop root)."""
    def inject(path: Path) -> None:
        shutil.rmtree(path / rel)
        (path / rel).write_text("not a directory")
    return inject


def nan_action(path: Path) -> None:
    """A value gone wrong although every chunk reads (written through zarr: checksum fine)."""
    zarr.open_array(str(path / EP / "steps" / "action"), mode="r+")[3, 0] = np.nan


@dataclass
class Case:
    inject: Callable[[Path], None]
    said: tuple[str, ...]       # what validate must say about episode 1
    repair: str                 # "dropped" or "step table rebuilt"
    info_sees_it: bool = True   # info reads metadata only: chunk damage is validate's


CHUNK = "streams/joint_states/position: chunk 0 (rows 0-499, file c/0/0) is damaged"
CASES = {
    "truncated_chunk": Case(truncate, (CHUNK, "checksum mismatch"), "dropped", info_sees_it=False),
    "bit_flip_in_chunk": Case(flip(f"{POSITION}/c/0/0"), (CHUNK, "checksum mismatch"), "dropped",
                              info_sees_it=False),
    "bit_flip_in_step_table": Case(flip(f"{EP}/steps/action/c/0/0"),
                                   ("steps/action: chunk 0 (rows 0-9, file c/0/0) is damaged", "checksum mismatch"),
                                   "step table rebuilt", info_sees_it=False),
    "nan_in_step_table": Case(nan_action, ("steps/action: non-finite actions",), "step table rebuilt",
                              info_sees_it=False),
    "missing_array": Case(remove(f"{EP}/streams/joint_states/velocity"),
                          ("streams/joint_states/velocity: missing",), "dropped"),
    "garbage_array_metadata": Case(overwrite(f"{POSITION}/zarr.json", b"\x00\xffgarbage{"),
                                   ("streams/joint_states/position/zarr.json: damaged",), "dropped"),
    "bad_array_metadata": Case(overwrite(f"{POSITION}/zarr.json", b'{"zarr_format": 3, "node_type": "array"}'),
                               ("streams/joint_states/position/zarr.json: damaged: not a valid zarr array",),
                               "dropped", info_sees_it=False),
    "garbage_episode_metadata": Case(overwrite(f"{EP}/zarr.json", b'{"attributes": {"status": "comp'),
                                     ("zarr.json: damaged: not valid JSON",), "dropped"),
    "missing_step_table": Case(remove(f"{EP}/steps"), ("steps: missing",), "step table rebuilt"),
    "unreadable_directory": Case(dir_to_file(f"{EP}/streams/ee_pose"),
                                 ("streams/ee_pose: a file stands where a directory should be",), "dropped"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_fault_is_named_with_what_to_do_and_repair_fixes_or_drops_it(case, store, pristine, capsys):
    c = CASES[case]
    intact = digests(store, *INTACT, "zarr.json", "episodes/zarr.json")
    c.inject(store)

    r = run_cli("validate", store)
    assert r.returncode == 1, r.stdout + r.stderr
    problems = [line for line in r.stdout.splitlines() if line.startswith("problem:")]
    assert problems and all(line.startswith("problem: episode 1: ") for line in problems), r.stdout
    for text in c.said:
        assert text in r.stdout, r.stdout
    remedy = "rebuilds its step table" if c.repair == "step table rebuilt" else "drops episode 1"
    assert f"what to do: `robot-learning dataset repair {store}` {remedy}" in r.stdout, r.stdout

    code, out = cli_in_process(capsys, "info", store)
    if c.info_sees_it:
        assert code == 1 and "   1 damaged" in out and c.said[0] in out, out
        assert "episode 1 is damaged and skipped" in out and remedy in out, out
        assert "total: 2 episodes" in out, out
        with pytest.warns(UserWarning, match="1 damaged episode"):
            ds = Dataset(store)   # readers skip it, and say so
        assert ds.indices == [0, 2]
        with pytest.raises(DatasetError, match="episode 1 of .* is damaged"):
            ds.episode(1)
    else:
        assert code == 0 and "reads every chunk" in out, out

    r = run_cli("repair", store)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"episode 1: {c.repair} ({c.said[0]}" in r.stdout, r.stdout

    assert digests(store, *INTACT, "zarr.json", "episodes/zarr.json") == intact  # not one byte written
    ds, problems = validate_store(store)
    assert problems == [], problems
    if c.repair == "dropped":
        assert ds.indices == [0, 2] and not (store / EP).exists()
    else:  # rebuilt from the streams: the same table the recorder wrote
        assert ds.indices == [0, 1, 2]
        before, after = zarr.open_group(str(pristine / EP), mode="r"), ds.episode(1).group
        keys = [k for k, a in before["steps"].members(max_depth=None) if isinstance(a, zarr.Array)]
        assert len(keys) > 20
        for k in keys:
            assert np.array_equal(before["steps"][k][:], after["steps"][k][:]), k
        assert after.attrs["status"] == "complete" and "rebuilt" in after.attrs["repaired"]
        assert after.attrs["n_steps"] == before.attrs["n_steps"] and after.attrs["success"] is True


def test_damaged_root_metadata_is_named_and_rewritten_by_repair(store, capsys):
    intact = digests(store, "episodes")
    (store / "zarr.json").write_bytes(b'{"zarr_format": 3, "node_ty')
    for cmd in ("info", "validate"):
        r = run_cli(cmd, store)
        assert r.returncode == 1
        assert f"{store / 'zarr.json'} (the dataset's root metadata) is damaged: not valid JSON" in r.stderr, r.stderr
        assert f"`robot-learning dataset repair {store}` rewrites it" in r.stderr, r.stderr
    r = run_cli("repair", store)
    assert r.returncode == 0 and "zarr.json: was damaged, rewritten" in r.stdout, r.stdout + r.stderr
    assert digests(store, "episodes") == intact
    code, out = cli_in_process(capsys, "validate", store)
    assert code == 0 and "3 episodes checked" in out and ": OK" in out, out
    assert Dataset(store).meta["schema_version"] == 1


def test_garbage_in_the_episodes_group_metadata_is_rewritten(store):
    (store / "episodes" / "zarr.json").write_bytes(b"\x00")
    r = run_cli("info", store)
    assert r.returncode == 1 and "episodes/zarr.json (the episodes group's metadata) is damaged" in r.stderr
    r = run_cli("repair", store)
    assert r.returncode == 0 and "episodes/zarr.json: was damaged, rewritten" in r.stdout, r.stdout + r.stderr
    assert validate_store(store)[1] == []


def _unprivileged(path: Path, warm: Path) -> dict[str, tuple[int, str]] | None:
    """(exit code, output) of info, validate and repair run as uid 65534 (root reads
    through chmod 000); None when root may not change its user id here. Everything is
    imported and used once on ``warm`` first: /root, where the interpreter lives, is
    closed to that user."""
    code = f"""
import contextlib, io, json, os, sys, traceback
from robot_learning.cli import main
def run(cmd, path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main(["dataset", cmd, path])
        except BaseException:
            traceback.print_exc()
            code = -1
    return code, out.getvalue()
for cmd in ("validate", "repair"):
    run(cmd, {str(warm)!r})
if os.geteuid() == 0:
    try:
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
    except PermissionError:
        print("null"); sys.exit()
print(json.dumps({{cmd: run(cmd, {str(path)!r}) for cmd in ("info", "validate", "repair")}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "ROBOT_LEARNING_HOME": os.getcwd()})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_unreadable_directory_is_named_and_left_for_the_user(pristine):
    top = Path(tempfile.mkdtemp(prefix="unreadable-"))   # outside pytest's tmp dirs, closed to others
    try:
        os.chmod(top, 0o755)
        path = top / "d.zarr"
        shutil.copytree(pristine, path)
        shutil.copytree(pristine, top / "warm.zarr")
        if os.geteuid() == 0:
            for root, dirs, files in os.walk(path):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.chown(name, 65534, 65534)
        intact = digests(path, *INTACT)
        os.chmod(path / EP / "streams" / "ee_pose", 0)
        results = _unprivileged(path, top / "warm.zarr")
        if results is None:
            pytest.skip("root may not change its user id here, and root reads through chmod 000")
        for cmd, (code, out) in results.items():
            assert code == 1 and "Traceback" not in out, (cmd, out)
            assert "streams/ee_pose: permission denied" in out, (cmd, out)
        assert "   1 damaged    streams/ee_pose: permission denied" in results["info"][1]
        assert ("problem: episode 1: streams/ee_pose: permission denied\n  what to do: fix the permissions of what "
                "is named (chmod/chown) and run validate again; repair leaves this episode as it is"
                in results["validate"][1]), results["validate"][1]
        assert "episode 1: left as is: streams/ee_pose: permission denied" in results["repair"][1]
        os.chmod(path / EP / "streams" / "ee_pose", 0o755)
        assert (path / EP / "steps").is_dir() and digests(path, *INTACT) == intact  # nothing dropped
        assert validate_store(path)[1] == []
    finally:
        for root, dirs, _ in os.walk(top):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        shutil.rmtree(top, ignore_errors=True)


def strip_checksums(path: Path) -> None:
    """Re-write every array with its codec chain less crc32c: a store as robot-learning
    wrote them before checksums were added."""
    episodes = zarr.open_group(str(path / "episodes"), mode="r+")
    for name, a in list(episodes.members(max_depth=None)):
        if not isinstance(a, zarr.Array):
            continue
        data, attrs = a[:], dict(a.attrs)
        serializer, *compressors = [c for c in a.metadata.codecs if c.to_dict()["name"] != "crc32c"]
        parent, _, leaf = name.rpartition("/")
        episodes[parent].create_array(leaf, shape=a.shape, dtype=str if a.dtype.kind in "UTO" else a.dtype,
                                      chunks=a.chunks, fill_value=a.fill_value, serializer=serializer,
                                      compressors=compressors, attributes=attrs, overwrite=True)[...] = data


def test_stores_written_without_checksums_still_open_and_validate(store, capsys):
    """Arrays written before checksums existed: they validate, the output says what can
    then be found, and a chunk that no longer decodes is still named."""
    strip_checksums(store)
    meta = (store / POSITION / "zarr.json").read_text()
    assert "crc32c" not in meta and "blosc" in meta

    code, out = cli_in_process(capsys, "validate", store)
    assert code == 0 and ": OK" in out, out
    assert re.search(r"note: (\d+) of \1 arrays were written without chunk checksums", out), out
    assert "only chunks that fail to decode are found" in out, out

    truncate(store)
    code, out = cli_in_process(capsys, "validate", store)
    assert code == 1 and f"problem: episode 1: {CHUNK}: cannot be decoded" in out and "no checksum" in out, out


def test_a_flipped_bit_fails_the_read_instead_of_returning_wrong_numbers(store):
    flip(f"{POSITION}/c/0/0")(store)
    ep = Dataset(store).episode(1)   # info-level checks read no chunks
    with pytest.raises(ValueError, match="checksum"):
        ep.streams["joint_states"]["position"][:]


def test_every_array_the_writer_creates_has_a_checksum(pristine):
    episodes = zarr.open_group(str(pristine / "episodes"), mode="r")
    arrays = [a for _, a in episodes.members(max_depth=None) if isinstance(a, zarr.Array)]
    assert len(arrays) > 150
    for a in arrays:
        assert a.metadata.codecs[-1].to_dict() == {"name": "crc32c"}, a.path


def test_a_writer_opening_a_store_with_a_damaged_episode_leaves_it(store):
    """The recorder must start (and not touch the damage) when an episode is broken."""
    (store / EP / "zarr.json").write_bytes(b"garbage")
    before = digests(store, EP)
    with pytest.warns(UserWarning, match="damaged episode"):
        w = DatasetWriter(store, RECIPE)
        assert w.next_index() == 3
        w.close()
        assert Dataset(store).indices == [0, 2]
    assert digests(store, EP) == before


def test_discarded_episodes_are_gone_the_rest_untouched_and_a_recording_store_is_refused(store):
    """What a restarted collection does with the episode a crash cut off: it goes, the others
    stay as they were, and the next episode is numbered on from the last one kept."""
    keep = digests(store, "episodes/000000")
    with pytest.raises(DatasetError, match="being written by another process"):
        w = DatasetWriter(store, RECIPE)
        try:
            discard_episodes(store, [2])   # never while a recorder holds the store
        finally:
            w.close()
    discard_episodes(store, [2])
    assert Dataset(store).indices == [0, 1] and digests(store, "episodes/000000") == keep
    w = DatasetWriter(store, RECIPE)
    assert w.next_index() == 2
    w.close()


def test_an_interrupted_episode_that_cannot_be_read_is_left_by_writers_and_dropped_by_repair(tmp_path):
    path = tmp_path / "i.zarr"
    w = DatasetWriter(path, RECIPE)
    record_episode(w.start_episode({"task": "t"}), seconds=1.0)
    w.close()                                  # no finish: as if the recorder died
    t_chunk = path / "episodes/000000/streams/joint_states/t/c/0"
    t_chunk.write_bytes(t_chunk.read_bytes()[:10])
    with pytest.warns(UserWarning, match="interrupted and damaged"):
        DatasetWriter(path, RECIPE).close()    # a recorder still starts
    assert t_chunk.stat().st_size == 10
    r = run_cli("repair", path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "episode 0: dropped: interrupted, and its data cannot be read" in r.stdout, r.stdout
    assert not (path / "episodes/000000").exists()


def test_store_does_not_import_repair():
    """repair builds on store (and store on layout), never the other way round."""
    def imported(module: str) -> set[str]:
        tree = ast.parse(Path(f"robot_learning/data/{module}.py").read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    assert "robot_learning.data.repair" not in imported("store")
    assert "robot_learning.data.store" in imported("repair")
    for base in ("layout", "steps", "schema"):
        assert not {"robot_learning.data.store", "robot_learning.data.repair"} & imported(base), base
