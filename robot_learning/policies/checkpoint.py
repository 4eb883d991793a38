"""Checkpoints: weights as safetensors (tensors only, so loading never runs code) and a JSON
file with the policy's configuration, its input/output spec and the normalization statistics.

A checkpoint is checked before anything is built from it: config.json against the explicit
schema below (required keys, types, allowed values; unknown keys refused by name), the
normalizer against the configuration, and the weights' safetensors header against the file's
size. Checkpoints get copied between machines and cut short, hand-edited, or swapped for a
``torch.save`` pickle; each such file must end in one ``PolicyError`` sentence that names the
file, what is wrong and what to do, never in a traceback from deep inside json, safetensors or
torch that the person on the robot cannot act on.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMAT, VERSION = "robot_learning.policy", 1
REEXPORT = "re-export the checkpoint (save it again, or copy an intact one)"


class PolicyError(RuntimeError):
    """A checkpoint that cannot be used as asked; the message says why and what to do."""


def write_checkpoint(module, path: str | Path, meta: dict) -> Path:
    """``module``'s weights as safetensors and ``meta`` as config.json, each written whole or not
    at all (a partial file renamed into place): a kill mid-save leaves the previous checkpoint."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
              str(path / "model.safetensors.partial"))
    (path / "model.safetensors.partial").replace(path / "model.safetensors")
    (path / "config.json.partial").write_text(json.dumps(meta, indent=1))
    (path / "config.json.partial").replace(path / "config.json")
    return path


def save_checkpoint(policy, path: str | Path, extra: dict | None = None) -> Path:
    return write_checkpoint(policy, path, {"format": FORMAT, "version": VERSION, "policy": "diffusion",
                                           "config": policy.cfg.to_json(), "spec": policy.cfg.spec(),
                                           "normalizer": policy.normalizer.to_json(), **(extra or {})})


# ---- config.json schema: key -> (required, what the value must be, test). Explicit rather than derived
# from DiffusionConfig so that a type error is refused here, with its key, before torch sees it.

Rule = tuple[bool, str, Callable[[Any], bool]]


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _list_of(item: Callable[[Any], bool], length: int | None = None) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and (length is None or len(v) == length) and all(item(x) for x in v)


def _names_to(item: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, dict) and all(item(x) for x in v.values())


def _object(v: Any) -> bool:
    return isinstance(v, dict)


SAMPLERS = ("ddim", "dpmsolver", "ddpm")     # what policies.diffusion.make_scheduler builds
PREDICTIONS = ("epsilon", "sample")          # what policies.diffusion's network outputs
DENOISERS = ("unet", "mlp")                   # policies.diffusion's networks (nets.unet1d, nets.mlp_denoiser)
IMAGE_ENCODERS = ("tiny", "small", "resnet18")  # nets.vision.ENCODERS (kept torch-free here)
ACTION_KINDS = ("twist", "tcp_pose")         # runtime.actions.ACTION_KINDS (kept torch-free here)
COUNT = "an integer >= 1"

META_SCHEMA: dict[str, Rule] = {
    "format": (True, f"'{FORMAT}'", lambda v: v == FORMAT),
    "version": (True, str(VERSION), lambda v: v == VERSION and not isinstance(v, bool)),
    "policy": (True, "'diffusion'", lambda v: v == "diffusion"),
    "config": (True, "an object", _object),
    "spec": (True, "an object", _object),
    "normalizer": (True, "an object of key -> {min, max}", _names_to(_object)),
    "recipe": (False, "an object", _object),
    "train": (False, "an object", _object),
}

CONFIG_SCHEMA: dict[str, Rule] = {
    "obs_dims": (True, "an object of observation key -> size >= 1", _names_to(_count)),
    "action_dim": (True, COUNT, _count),
    "image_shapes": (False, "an object of camera key -> [H, W, C], each >= 1", _names_to(_list_of(_count, 3))),
    "image_rois": (False, "an object of camera key -> [x0, y0, x1, y1], fractions with x0 < x1 and y0 < y1",
                   _names_to(lambda v: _list_of(_real, 4)(v) and 0 <= v[0] < v[2] <= 1 and 0 <= v[1] < v[3] <= 1)),
    "obs_horizon": (False, COUNT, _count),
    "pred_horizon": (False, COUNT, _count),
    "action_horizon": (False, COUNT, _count),
    "down_dims": (False, "a non-empty list of integers >= 1", lambda v: _list_of(_count)(v) and len(v) > 0),
    "denoiser": (False, "one of " + ", ".join(DENOISERS), lambda v: isinstance(v, str) and v in DENOISERS),
    "mlp_width": (False, COUNT, _count),
    "mlp_depth": (False, COUNT, _count),
    "image_feature_dim": (False, COUNT, _count),
    "tactile_shapes": (False, "an object of observation key -> [rows, cols, C], each >= 1",
                       _names_to(_list_of(_count, 3))),
    "tactile_feature_dim": (False, COUNT, _count),
    "image_encoder": (False, "one of " + ", ".join(IMAGE_ENCODERS),
                      lambda v: isinstance(v, str) and v in IMAGE_ENCODERS),
    "shared_image_encoder": (False, "true or false", lambda v: isinstance(v, bool)),
    "crop_fraction": (False, "a number in (0, 1]", lambda v: _real(v) and 0 < v <= 1),
    "train_timesteps": (False, COUNT, _count),
    "sampler": (False, "one of " + ", ".join(SAMPLERS), lambda v: isinstance(v, str) and v in SAMPLERS),
    "inference_steps": (False, COUNT, _count),
    "prediction": (False, "one of " + ", ".join(PREDICTIONS), lambda v: isinstance(v, str) and v in PREDICTIONS),
    "relative": (False, "a list of [a, b] observation key pairs",
                 _list_of(_list_of(lambda x: isinstance(x, str), 2))),
    "dt": (False, "a number > 0", lambda v: _real(v) and v > 0),
    "task": (False, "a string", lambda v: isinstance(v, str)),
    "action_kind": (False, "one of " + ", ".join(ACTION_KINDS), lambda v: isinstance(v, str) and v in ACTION_KINDS),
    "action_origin": (False, "an observation key (a pose) or empty", lambda v: isinstance(v, str)),
}


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _schema_problems(section: dict, schema: dict[str, Rule], prefix: str = "") -> list[str]:
    """What in ``section`` breaks ``schema``: unknown keys by name, missing required keys, bad values."""
    problems = []
    unknown = [prefix + k for k in section if k not in schema]
    if unknown:
        problems.append(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    for key, (required, want, ok) in schema.items():
        if key not in section:
            if required:
                problems.append(f"{prefix}{key} is missing")
        elif not ok(section[key]):
            problems.append(f"{prefix}{key} must be {want}, not {_short(section[key])}")
    return problems


def field_problems(section: Any, cls: type, required: tuple[str, ...], prefix: str = "config.") -> list[str]:
    """A config section against a dataclass's fields: unknown keys by name, required ones missing."""
    if not isinstance(section, dict):
        return [f"'{prefix.rstrip('.')}' must be an object of {cls.__name__}'s fields"]
    unknown = sorted(set(section) - set(cls.__dataclass_fields__))
    problems = ([f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)}"]
                if unknown else [])
    return problems + [f"{prefix}{k} is missing" for k in required if k not in section]


def _consistency_problems(cfg: dict, stats: dict) -> list[str]:
    """What the schema cannot see: every input the policy normalizes needs min and max of the size
    the configuration gives it, and the configuration must agree with itself. Each would otherwise
    surface as a broadcasting or key error at the first inference, on the robot."""
    problems = [f"config.relative pairs '{a}' with '{b}', but only {', '.join(cfg['obs_dims'])} are observed"
                for a, b in cfg.get("relative", []) if a not in cfg["obs_dims"] or b not in cfg["obs_dims"]]
    origin = cfg.get("action_origin", "")
    if origin and (cfg["obs_dims"].get(origin, 0) < 3 or cfg["action_dim"] < 3):
        problems.append(f"config.action_origin '{origin}' must be an observed pose (at least 3 values), "
                        f"and the actions at least 3 values")
    if cfg.get("inference_steps", 1) > cfg.get("train_timesteps", math.inf):
        problems.append(f"config.inference_steps {cfg['inference_steps']} exceeds config.train_timesteps "
                        f"{cfg['train_timesteps']}")
    if cfg.get("shared_image_encoder") and len({tuple(v) for v in cfg.get("image_shapes", {}).values()}) > 1:
        problems.append("config.shared_image_encoder is true, but config.image_shapes gives the cameras different "
                        "shapes; one encoder reads one shape")
    grids = cfg.get("tactile_shapes", {})
    for key, (rows, cols, ch) in grids.items():
        if cfg["obs_dims"].get(key) != rows * cols * ch:
            problems.append(f"config.tactile_shapes '{key}' is {rows}x{cols}x{ch}, but config.obs_dims gives it "
                            f"{cfg['obs_dims'].get(key, 'no')} values")
    sizes = dict(cfg["obs_dims"])
    sizes.update({k: shape[2] for k, shape in grids.items()})   # a grid's stats are per force axis
    sizes.update({f"{a}-{b}": 3 for a, b in cfg.get("relative", [])})   # policies.diffusion.relative_key
    sizes["action"] = cfg["action_dim"]
    if origin:   # the absolute actions' range (the network's are relative to the origin)
        sizes["action_bounds"] = cfg["action_dim"]
    for key in sizes:
        if key not in stats:
            problems.append(f"normalizer has no min/max stats for '{key}'")
    for key, s in stats.items():
        for side in ("min", "max"):
            v = s.get(side)
            if not _list_of(_real)(v):
                problems.append(f"normalizer.{key}.{side} must be a list of finite numbers, not {_short(v)}")
            elif key in sizes and len(v) != sizes[key]:
                problems.append(f"normalizer.{key}.{side} has {len(v)} values, the config needs {sizes[key]}")
    return problems


def read_json(file: Path, fix: str = REEXPORT) -> dict:
    """The JSON object in ``file``; a missing, cut-short or non-object file is a PolicyError."""
    if not file.is_file():
        raise PolicyError(f"{file} is missing; {fix}")
    try:
        data = json.loads(file.read_text())
    except UnicodeDecodeError:
        raise PolicyError(f"{file} is not a JSON text file (it holds binary data); {fix}") from None
    except json.JSONDecodeError as e:
        raise PolicyError(f"{file} is not valid JSON ({e.msg}, line {e.lineno} column {e.colno}), "
                          f"so it is damaged or cut short; {fix}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{file} must hold a JSON object, not a {type(data).__name__}; {fix}")
    return data


def diffusion_problems(meta: dict) -> list[str]:
    """What is wrong with a diffusion checkpoint's config.json (the registry's check for the
    kind): the schema, then the normalizer against the configuration. Nothing is built, so a bad
    file costs no model construction."""
    problems = _schema_problems(meta, META_SCHEMA)
    if not problems:
        problems = _schema_problems(meta["config"], CONFIG_SCHEMA, "config.")
    if not problems:
        problems = _consistency_problems(meta["config"], meta["normalizer"])
    return problems


_PICKLE_STARTS = (b"\x80", b"PK\x03\x04")   # pickle protocol >= 2; torch.save's zip archive


def _safetensors_problem(file: Path) -> str | None:
    """Why ``file`` is no safetensors file, from its 8-byte header length, JSON header and size,
    before safetensors reads it (whose own errors, e.g. 'HeaderTooLarge', say nothing useful)."""
    size = file.stat().st_size
    with file.open("rb") as f:
        start = f.read(9)   # u64 little-endian header length, then the JSON header's "{"
        if len(start) < 9 or start[8:9] != b"{":
            if start.startswith(_PICKLE_STARTS):
                return ("is a Python pickle (as torch.save writes), not a safetensors file; pickles can run "
                        "code when loaded, so it is never read")
            if len(start) < 9:
                return f"is cut short: {size} bytes, not even a safetensors header"
            return "is not a safetensors file (it does not start with a safetensors header)"
        (n,) = struct.unpack("<Q", start[:8])
        if n > size - 8:
            return f"is cut short: {size} bytes, its header alone needs {n + 8}"
        f.seek(8)
        try:
            header = json.loads(f.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "is not a safetensors file (its header is not a safetensors tensor table)"
    if size < 8 + n + end:
        return f"is cut short: {size} of {8 + n + end} bytes"
    if size > 8 + n + end:
        return f"has {size - 8 - n - end} bytes more than its header describes"
    return None


def load_weights(module, file: Path, device: str = "cpu", fix: str = REEXPORT) -> None:
    """Copies the tensors of the safetensors ``file`` into ``module`` (safetensors only: reading it
    runs no code). A damaged file, or tensors that do not fit ``module`` (a config.json edited
    apart from its weights), is a PolicyError naming the file and ``fix``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise PolicyError(f"{file} is missing; {fix}")
    problem = _safetensors_problem(file)
    if problem:
        raise PolicyError(f"{file} {problem}; {fix}")
    try:
        state = load_file(str(file), device=device)
    except (SafetensorError, OSError) as e:
        raise PolicyError(f"{file} could not be read as safetensors ({e}); {fix}") from None
    want = module.state_dict()
    wrong = [f"missing {k}" for k in want if k not in state][:3]
    wrong += [f"unexpected {k}" for k in state if k not in want][:3]
    wrong += [f"{k} is {list(v.shape)}, expected {list(want[k].shape)}" for k, v in state.items()
              if k in want and v.shape != want[k].shape][:3]
    if wrong:
        raise PolicyError(f"{file}: the weights do not fit the configuration in config.json "
                          f"({', '.join(wrong)}); {fix}")
    module.load_state_dict(state)


def _spec_diff(want: dict, have: dict) -> list[str]:
    return [f"{k}: the checkpoint has {have.get(k)!r}, expected {want[k]!r}" for k in want if have.get(k) != want[k]]


def load_checkpoint(path, expect_spec: dict | None = None, device: str = "cpu"):
    """The diffusion policy saved at ``path`` and its config.json; ``expect_spec`` (what the
    caller will feed it) must match. The metadata is read and validated in full
    (``registry.read_checkpoint``, unless ``path`` is the metadata already read) before the model
    is built, the weights before they are copied."""
    from robot_learning.policies.diffusion import DiffusionConfig, DiffusionPolicy
    from robot_learning.policies.normalizer import Normalizer
    from robot_learning.policies.registry import CheckpointMeta, as_meta

    if not isinstance(path, CheckpointMeta):
        path = Path(path)
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise PolicyError(f"{path} is not a checkpoint: it needs config.json and model.safetensors")
    meta = as_meta(path)
    path = meta.path
    if meta.kind != "diffusion":
        raise PolicyError(f"{path} is a {meta.kind} checkpoint, not a diffusion policy")
    if expect_spec is not None:
        diff = _spec_diff(expect_spec, meta.raw["spec"])
        if diff:
            raise PolicyError(f"{path} does not fit these observations/actions: " + "; ".join(diff))
    policy = DiffusionPolicy(DiffusionConfig(**meta.config), Normalizer(meta.normalizer))
    load_weights(policy, path / "model.safetensors", device)
    return policy.to(device).eval(), meta.raw
