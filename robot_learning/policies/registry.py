"""Policy kinds: one registry, and the one reader of a checkpoint's metadata.

A checkpoint is a directory with ``config.json`` (what it is) and ``model.safetensors``. Every
place that opens one (the policy server, evaluation and env rollouts, a resumed run, a residual
or DSRL checkpoint naming its base) goes through ``read_checkpoint``: it checks the format,
finds the kind, lets the kind check its own configuration, and checks that a base checkpoint
is still the one it was trained on, before anything is built. ``load_policy`` then asks the
kind for a server-ready policy, so the server and the evaluator never learn which kind it is.

A kind is a module that registers a ``PolicyKind`` (its checks and its loader); the built-in
ones are imported when first named, so reading metadata costs no torch import of kinds not used.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robot_learning.policies.checkpoint import PolicyError, read_json

FORMATS = {"robot_learning.policy": 1, "robot_learning.sac": 1}   # what config.json's "format" may say
BUILTIN = {"diffusion": "robot_learning.policies.diffusion", "sac": "robot_learning.policies.sac",
           "residual": "robot_learning.policies.residual", "dsrl": "robot_learning.policies.dsrl",
           "residual_sac": "robot_learning.policies.residual", "slow_fast": "robot_learning.policies.slow_fast"}
RETRAIN = "retrain it on the base you have, or put back the base it was trained on"


@dataclass(frozen=True)
class PolicyKind:
    name: str
    check: Callable[[dict], list[str]]        # what is wrong with config.json's content (nothing: [])
    load: Callable[..., Any]                  # (CheckpointMeta, device, **options) -> runtime.policy.Policy
    options: tuple[str, ...] = ()             # deploy-time options it takes (diffusion: sampler, ...)


_KINDS: dict[str, PolicyKind] = {}


def register_kind(kind: PolicyKind) -> PolicyKind:
    _KINDS[kind.name] = kind
    return kind


def policy_kind(name: str) -> PolicyKind:
    if name not in _KINDS and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in _KINDS:
        raise PolicyError(f"policy type '{name}' is not known (known: {', '.join(sorted(set(BUILTIN) | set(_KINDS)))})")
    return _KINDS[name]


@dataclass
class BaseRef:
    """The checkpoint another one was trained on top of, by path and content hash."""

    path: Path
    sha256: str


@dataclass
class CheckpointMeta:
    path: Path
    kind: str
    raw: dict = field(repr=False)             # config.json as read

    @property
    def config(self) -> dict:
        return self.raw["config"]

    @property
    def recipe(self) -> dict | None:
        return self.raw.get("recipe")

    @property
    def normalizer(self) -> dict | None:
        return self.raw.get("normalizer")

    @property
    def train(self) -> dict:
        return self.raw.get("train") or {}

    @property
    def base(self) -> BaseRef | None:
        b = self.raw.get("base")
        return BaseRef(_base_path(self.path, b["path"]), b["sha256"]) if b else None


def checkpoint_digest(path: str | Path) -> str:
    """sha256 of a checkpoint's config.json and weights: changes whenever either does."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with (Path(path) / name).open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def base_ref(path: str | Path) -> dict:
    """What a checkpoint trained on top of ``path`` records of it (config.json's ``base``)."""
    path = Path(path).resolve()
    return {"path": str(path), "sha256": checkpoint_digest(path)}


def _base_path(checkpoint: Path, recorded: str) -> Path:
    """The base as recorded, or beside the checkpoint under the same name (copied together)."""
    p = Path(recorded)
    if not p.exists() and (checkpoint / p.name).exists():
        return checkpoint / p.name
    return p


def _check_base(path: Path, raw: Any) -> None:
    if not (isinstance(raw, dict) and isinstance(raw.get("path"), str) and isinstance(raw.get("sha256"), str)):
        raise PolicyError(f"{path / 'config.json'}: 'base' must be {{path, sha256}} of the checkpoint it was "
                          "trained on; re-export the checkpoint")
    base = _base_path(path, raw["path"])
    if not (base / "config.json").is_file() or not (base / "model.safetensors").is_file():
        raise PolicyError(f"{path} was trained on top of {raw['path']}, which is not a checkpoint here; copy the "
                          f"base there (or into {path}) or {RETRAIN}")
    digest = checkpoint_digest(base)
    if digest != raw["sha256"]:
        raise PolicyError(f"{path} was trained on top of {base}, but that checkpoint has changed since (sha256 "
                          f"{digest[:12]}, trained on {raw['sha256'][:12]}); {RETRAIN}")


def read_checkpoint(path: str | Path, check_base: bool = True) -> CheckpointMeta:
    """config.json of the checkpoint at ``path``, checked by its kind, its base checked by hash
    (``check_base=False``: for a learner resuming its agent, which never runs the base and may be
    on another machine than the actor that has it). Anything wrong is one PolicyError sentence
    that names the file and what to do."""
    path = Path(path)
    cfg = path / "config.json"
    if not cfg.is_file():
        raise PolicyError(f"{path} is not a checkpoint: there is no config.json (train one with "
                          "`robot-learning train diffusion --dataset ...`)")
    raw = read_json(cfg)
    fmt, version = raw.get("format"), raw.get("version")
    name = raw.get("policy") or ("sac" if fmt == "robot_learning.sac" else None)
    if not isinstance(name, str):
        raise PolicyError(f"{cfg}: 'policy' must name the policy type; re-export the checkpoint")
    try:
        kind = policy_kind(name)
    except PolicyError as e:
        raise PolicyError(f"{cfg}: {e}") from None
    if fmt not in FORMATS or version != FORMATS[fmt]:
        raise PolicyError(f"{cfg}: format {fmt} v{version}; this robot-learning reads "
                          f"{', '.join(f'{f} v{v}' for f, v in FORMATS.items())}")
    problems = kind.check(raw)
    if problems:
        raise PolicyError(f"{cfg} is not a valid {name} checkpoint configuration: {'; '.join(problems)}; "
                          "re-export the checkpoint")
    if "base" in raw and check_base:
        _check_base(path, raw["base"])
    return CheckpointMeta(path, name, raw)


def as_meta(checkpoint: str | Path | CheckpointMeta) -> CheckpointMeta:
    """A checkpoint's metadata, read (and its base hashed) only if the caller has not already."""
    return checkpoint if isinstance(checkpoint, CheckpointMeta) else read_checkpoint(checkpoint)


def checkpoint_recipe(checkpoint: str | Path | CheckpointMeta):
    """The recipe a checkpoint's observation keys refer to: a diffusion checkpoint carries its
    own (so do residual and DSRL ones, through their base); a SAC one names keys of the workcell's."""
    from robot_learning.data.schema import load_recipe, parse_recipe
    from robot_learning.paths import project_root

    meta = as_meta(checkpoint)
    while meta.recipe is None and meta.base is not None:
        meta = read_checkpoint(meta.base.path)
    if meta.recipe is not None:
        return parse_recipe(meta.recipe, str(meta.path))
    return load_recipe(project_root() / "datasets" / "recipes" / "workcell.yaml")


def load_policy(path: str | Path | CheckpointMeta, device: str = "cpu", **options):
    """The checkpoint at ``path`` as a server-ready policy, whatever its kind. ``options`` are
    deploy-time settings (diffusion and the kinds built on it: ``sampler``, ``inference_steps``,
    ``noise_scale``); None, empty or an integer 0 keep the checkpoint's own (a noise scale of
    0.0 is a setting), one its kind does not take is an error."""
    meta = as_meta(path)
    kind = policy_kind(meta.kind)
    given = {k: v for k, v in options.items() if v is not None and v != "" and not (type(v) is int and v == 0)}
    unknown = sorted(set(given) - set(kind.options))
    if unknown:
        raise PolicyError(f"{meta.path}: a {meta.kind} policy takes no {', '.join(unknown)} "
                          f"(it takes: {', '.join(kind.options) or 'no options'})")
    return kind.load(meta, device, **given)
