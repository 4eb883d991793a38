"""``robot-learning launch``: run a ROS 2 YAML launch file.

Hands over to ``ros2 launch`` where it is installed. Otherwise it runs the file itself:
the subset of the YAML launch format this project's files use (``arg``, ``let``, ``node``,
``include``, ``group`` with ``push-ros-namespace``, ``if``/``unless``, and the
substitutions ``$(var)``, ``$(env)``, ``$(find-pkg-share)``), each node as its own
process, found where ``ros2 launch`` finds it (``<prefix>/lib/<package>/``), a report
when one dies, a clean shutdown of all on Ctrl-C, SIGTERM or SIGHUP, and no node left
behind when the launcher itself is killed.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off", ""}


class LaunchError(RuntimeError):
    """The launch file is malformed or names something that cannot be found."""


@dataclass
class NodeSpec:
    name: str
    cmd: list[str]
    on_exit_shutdown: bool = False


@dataclass
class Context:
    args: dict[str, str]
    file: Path
    namespace: str = ""
    nodes: list[NodeSpec] = field(default_factory=list)


def find_pkg_prefix(pkg: str) -> Path:
    """The install prefix of ``pkg``: the first AMENT_PREFIX_PATH entry whose ament index lists
    it, as ament_index_python's ``get_package_prefix`` finds it."""
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        marker = Path(prefix) / "share" / "ament_index" / "resource_index" / "packages" / pkg
        if marker.exists():
            return Path(prefix)
    raise LaunchError(f"package '{pkg}' not found: is AMENT_PREFIX_PATH set (run `make setup`, "
                      "or source your ROS 2 workspace's install/setup.bash)?")


def find_pkg_share(pkg: str) -> Path:
    """The package's share directory, looked up in AMENT_PREFIX_PATH like ament_index does."""
    return find_pkg_prefix(pkg) / "share" / pkg


def find_executable(pkg: str, exe: str) -> str:
    """``<prefix>/lib/<pkg>/<exe>`` under the package's own prefix, and nowhere else: the rule of
    ``ros2 launch`` (launch_ros's ExecutableInPackage), so a launch file that runs here runs
    there too. colcon installs a package's nodes there; `make setup` links pip's into it."""
    libexec = find_pkg_prefix(pkg) / "lib" / pkg
    if not libexec.is_dir():
        raise LaunchError(f"package '{pkg}' found at '{libexec.parent.parent}', but libexec directory "
                          f"'{libexec}' does not exist (run `make setup`, or build it with colcon)")
    cand = libexec / exe
    if not (cand.is_file() and os.access(cand, os.X_OK)):
        raise LaunchError(f"executable '{exe}' of package '{pkg}' not found in '{libexec}' (a new entry "
                          "point? run `make setup`, or colcon build)")
    return str(cand)


_SUBST = re.compile(r"\$\(([a-z-]+)((?:\s+[^()\s]+)*)\s*\)")


def substitute(value: Any, ctx: Context) -> str:
    """Resolve ``$(...)`` substitutions in a scalar, innermost first."""
    s = "" if value is None else str(value)
    while True:
        m = _SUBST.search(s)
        if not m:
            return s
        kind, parts = m.group(1), m.group(2).split()
        if kind == "var":
            if not parts or parts[0] not in ctx.args:
                raise LaunchError(f"{ctx.file}: $(var {' '.join(parts)}) is not a declared argument")
            rep = ctx.args[parts[0]]
        elif kind == "env":
            rep = os.environ.get(parts[0], " ".join(parts[1:]) if len(parts) > 1 else None)
            if rep is None:
                raise LaunchError(f"{ctx.file}: environment variable {parts[0]} is not set")
        elif kind == "find-pkg-share":
            rep = str(find_pkg_share(parts[0]))
        elif kind == "dirname":
            rep = str(ctx.file.parent)
        elif kind == "eval":
            rep = _safe_eval(" ".join(parts).strip("'"), ctx)
        else:
            raise LaunchError(f"{ctx.file}: substitution $({kind}) is not supported by this runner; "
                              "install ROS 2 and use `ros2 launch`")
        s = s[: m.start()] + rep + s[m.end():]


def _safe_eval(expr: str, ctx: Context) -> str:
    """``$(eval ...)`` for what launch conditions need: literals, comparisons, in, and/or/not,
    ``a if cond else b``.
    Real ``ros2 launch`` evaluates any Python; this runner refuses anything more."""
    import ast

    def ev(n: ast.AST):
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, ast.BoolOp):
            vals = [ev(v) for v in n.values]
            return all(vals) if isinstance(n.op, ast.And) else any(vals)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Not):
            return not ev(n.operand)
        if isinstance(n, ast.Compare) and len(n.ops) == 1:
            a, b = ev(n.left), ev(n.comparators[0])
            ops = {ast.Eq: lambda: a == b, ast.NotEq: lambda: a != b, ast.In: lambda: a in b,
                   ast.NotIn: lambda: a not in b, ast.Lt: lambda: a < b, ast.LtE: lambda: a <= b,
                   ast.Gt: lambda: a > b, ast.GtE: lambda: a >= b}
            if type(n.ops[0]) in ops:
                return ops[type(n.ops[0])]()
        if isinstance(n, ast.IfExp):
            return ev(n.body) if ev(n.test) else ev(n.orelse)
        if isinstance(n, (ast.Tuple, ast.List)):
            return [ev(e) for e in n.elts]
        raise LaunchError(f"{ctx.file}: $(eval {expr}) is beyond this runner (literals, comparisons, in, and, or, "
                          "not, if-else); use `ros2 launch`")

    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise LaunchError(f"{ctx.file}: $(eval {expr}): {e.msg}") from None
    return str(ev(tree.body))


def _condition(entry: dict, ctx: Context) -> bool:
    for key, want in (("if", True), ("unless", False)):
        if key in entry:
            v = substitute(entry[key], ctx).strip().lower()
            if v not in TRUE | FALSE:
                raise LaunchError(f"{ctx.file}: '{key}: {v}' is not a boolean")
            if (v in TRUE) != want:
                return False
    return True


def _param_value(v: Any, ctx: Context) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_param_value(x, ctx) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    s = substitute(v, ctx)
    return s if s != "" else "''"


def _node(entry: dict, ctx: Context) -> NodeSpec:
    for key in ("pkg", "exec"):
        if key not in entry:
            raise LaunchError(f"{ctx.file}: a node needs '{key}'")
    pkg, exe = substitute(entry["pkg"], ctx), substitute(entry["exec"], ctx)
    cmd = [find_executable(pkg, exe)]
    cmd += [substitute(a, ctx) for a in str(entry.get("args", "")).split()]
    cmd.append("--ros-args")
    name = substitute(entry.get("name", exe), ctx)
    if "name" in entry:
        cmd += ["-r", f"__node:={name}"]
    ns = "/".join(x.strip("/") for x in (ctx.namespace, substitute(entry.get("namespace", ""), ctx)) if x.strip("/"))
    if ns:
        cmd += ["-r", f"__ns:=/{ns}"]
    for p in entry.get("param", []) or []:
        if "from" in p:
            cmd += ["--params-file", substitute(p["from"], ctx)]
        else:
            cmd += ["-p", f"{substitute(p['name'], ctx)}:={_param_value(p.get('value'), ctx)}"]
    for r in entry.get("remap", []) or []:
        cmd += ["-r", f"{substitute(r['from'], ctx)}:={substitute(r['to'], ctx)}"]
    return NodeSpec(name, cmd, on_exit_shutdown=str(entry.get("on_exit", "")) == "shutdown")


def _walk(actions: list, ctx: Context) -> None:
    for action in actions or []:
        if not isinstance(action, dict) or len(action) != 1:
            raise LaunchError(f"{ctx.file}: each launch entry must be a one-key mapping, got {action!r}")
        (kind, body), = action.items()
        body = body or {}
        if not _condition(body, ctx):
            continue
        if kind == "arg":
            name = body["name"]
            if name not in ctx.args:
                if "default" not in body:
                    raise LaunchError(f"{ctx.file}: argument '{name}' has no default: pass {name}:=VALUE")
                ctx.args[name] = substitute(body["default"], ctx)
        elif kind == "let":
            ctx.args[body["name"]] = substitute(body["value"], ctx)
        elif kind == "node":
            ctx.nodes.append(_node(body, ctx))
        elif kind == "group":
            sub = Context(dict(ctx.args) if body.get("scoped", True) else ctx.args, ctx.file, ctx.namespace, ctx.nodes)
            for child in body.get("children", []) or []:
                if isinstance(child, dict) and ("push-ros-namespace" in child or "push_ros_namespace" in child):
                    c = child.get("push-ros-namespace") or child.get("push_ros_namespace")
                    ns = substitute(c.get("namespace", ""), sub)
                    sub.namespace = f"{sub.namespace}/{ns.strip('/')}" if ns.strip("/") else sub.namespace
                else:
                    _walk([child], sub)
        elif kind == "include":
            path = Path(substitute(body["file"], ctx))
            inc_args = {a["name"]: substitute(a["value"], ctx) for a in body.get("arg", []) or []}
            inc = Context(inc_args, path, ctx.namespace, ctx.nodes)
            _walk(_load(path), inc)
        else:
            raise LaunchError(f"{ctx.file}: '{kind}' actions are not supported by this runner; "
                              "install ROS 2 and use `ros2 launch`")


def _load(path: Path) -> list:
    if not path.is_file():
        raise LaunchError(f"launch file not found: {path}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or "launch" not in data:
        raise LaunchError(f"{path}: not a YAML launch file (expected a top-level 'launch:' list)")
    return data["launch"]


def plan(path: str | Path, args: dict[str, str]) -> list[NodeSpec]:
    """The processes a launch file starts, without starting them."""
    p = Path(path).resolve()
    ctx = Context(dict(args), p)
    _walk(_load(p), ctx)
    return ctx.nodes


def parse_launch_args(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        if ":=" not in it:
            raise LaunchError(f"launch argument '{it}' must look like name:=value")
        k, v = it.split(":=", 1)
        out[k] = v
    return out


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for ``Popen``: the child is SIGKILLed when the process that started it
    dies, however it dies (Linux's PR_SET_PDEATHSIG; a no-op elsewhere).

    Nodes run in their own process groups, so nothing else takes them down with the launcher:
    a SIGKILLed launcher left its nodes running at full speed, a node hung on start-up among
    them. SIGKILL rather than SIGTERM because a hung node ignores SIGTERM and, with the launcher
    gone, nobody is left to escalate; every other way the launcher stops (Ctrl-C, SIGTERM,
    SIGHUP, a node's ``on_exit: shutdown``) shuts the nodes down in order first. The signal
    comes when the *thread* that called ``Popen`` ends, so call it from the main thread."""
    parent = os.getpid()

    def preexec() -> None:
        if _LIBC is None:
            return
        _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class Launcher:
    """Starts the planned processes and supervises them until they end or we are stopped.

    Each node runs in its own session (a terminal's Ctrl-C reaches only the launcher, which
    then stops the nodes in order) and dies with the launcher if it is killed (``die_with_parent``).
    """

    def __init__(self, nodes: list[NodeSpec], grace: float = 10.0):
        self.nodes = nodes
        self.grace = grace
        self.procs: list[tuple[NodeSpec, subprocess.Popen]] = []
        self._stop = threading.Event()

    def _pump(self, name: str, stream) -> None:
        for line in iter(stream.readline, b""):
            sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
            sys.stdout.flush()

    def start(self) -> None:
        for spec in self.nodes:
            proc = subprocess.Popen(spec.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=die_with_parent())
            print(f"[launch] started {spec.name} (pid {proc.pid})", flush=True)
            threading.Thread(target=self._pump, args=(spec.name, proc.stdout), daemon=True).start()
            self.procs.append((spec, proc))

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> int:
        """Supervise; returns 0 when every node ended cleanly."""
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:  # a closed terminal (unless under nohup)
            signal.signal(signal.SIGHUP, self.request_stop)
        try:
            self.start()
            return self._supervise()
        finally:
            self.shutdown()

    def _supervise(self) -> int:
        failed, reported = False, set()
        while not self._stop.is_set():
            alive = 0
            for spec, proc in self.procs:
                rc = proc.poll()
                if rc is None:
                    alive += 1
                elif proc.pid not in reported:
                    reported.add(proc.pid)
                    if rc != 0:
                        failed = True
                        print(f"[launch] ERROR: node '{spec.name}' (pid {proc.pid}) died with exit code {rc}",
                              flush=True)
                    else:
                        print(f"[launch] node '{spec.name}' (pid {proc.pid}) finished", flush=True)
                    if spec.on_exit_shutdown:
                        print(f"[launch] '{spec.name}' ended with on_exit: shutdown; stopping all", flush=True)
                        self._stop.set()
            if alive == 0:
                break
            self._stop.wait(0.1)
        return 1 if failed else 0

    def shutdown(self) -> None:
        """SIGINT to every node (what Ctrl-C sends), SIGTERM after the grace period, then SIGKILL."""
        for sig, wait in ((signal.SIGINT, self.grace), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            live = [(s, p) for s, p in self.procs if p.poll() is None]
            if not live:
                return
            for _, p in live:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + wait
            while time.monotonic() < end and any(p.poll() is None for _, p in live):
                time.sleep(0.05)
            if sig != signal.SIGINT:
                for s, p in live:
                    if p.poll() is not None:
                        print(f"[launch] {s.name} needed {sig.name} to stop", flush=True)


def main(path: str, arg_items: list[str], force_builtin: bool = False) -> int:
    """Entry point of ``robot-learning launch``."""
    ros2 = shutil.which("ros2")
    if ros2 and not force_builtin:
        os.execvp(ros2, [ros2, "launch", str(path), *arg_items])
    try:
        nodes = plan(path, parse_launch_args(arg_items))
    except (LaunchError, KeyError, yaml.YAMLError) as e:
        print(f"robot-learning launch: {e}", file=sys.stderr)
        return 2
    if not nodes:
        print("robot-learning launch: the file starts no nodes", file=sys.stderr)
        return 0
    return Launcher(nodes).run()
