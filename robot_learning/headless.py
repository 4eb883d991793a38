"""MuJoCo rendering on a machine without a display (a robot PC over ssh, CI, a container).

MuJoCo picks its GL platform once, when first imported: GLFW unless ``MUJOCO_GL`` says
otherwise, and GLFW needs a display. ``use_headless_gl`` is the first thing a renderer's entry
point calls (the sim node, ``robot-learning train|evaluate|demo``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

HEADLESS_GL = ("egl", "osmesa")  # MUJOCO_GL values that need no display, in order of preference
_GL_PROBE = ("import mujoco; m = mujoco.MjModel.from_xml_string('<mujoco/>'); gl = mujoco.GLContext(64, 64); "
             "gl.make_current(); mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_100).free(); gl.free()")


def headless_gl_works(backend: str, timeout: float = 60.0) -> bool:
    """Whether MuJoCo renders offscreen here with ``MUJOCO_GL=backend``. Tried in a child
    process: MuJoCo and PyOpenGL fix their GL platform when first imported, and a GL start-up
    that fails can leave MuJoCo's renderer stuck for good."""
    env = {**os.environ, "MUJOCO_GL": backend}
    env.pop("PYOPENGL_PLATFORM", None)
    try:
        probe = subprocess.run([sys.executable, "-c", _GL_PROBE], env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def use_headless_gl(log: Callable[[str], None] | None = None) -> None:
    """First thing in the ``main`` of a node that renders with MuJoCo: when MuJoCo took GLFW
    (``MUJOCO_GL`` unset or ``glfw``) and there is no display, re-execute this process (same
    command line) with the first of EGL and OSMesa that works, or stop with a message saying
    what to install or set.

    GLFW needs a display: without one the sim node printed two GLFW warnings and then published
    nothing, forever (its camera threads stuck in MuJoCo's renderer set-up, holding the GIL, so
    not even Ctrl-C got through). MuJoCo picks its backend once, at import, hence the re-exec;
    and the backend it took is checked rather than ``MUJOCO_GL``, which an import may have set
    since (``robot_learning.sim.workcell`` does, after MuJoCo is imported). Without MuJoCo (a
    training machine given a dataset) there is nothing to render and nothing to do."""
    try:
        import mujoco
    except ImportError:
        return

    context = getattr(mujoco, "GLContext", None)  # absent with MUJOCO_GL=disable
    if (context is None or not context.__module__.startswith("mujoco.glfw") or os.environ.get("DISPLAY")
            or not sys.platform.startswith("linux")):
        return
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    for backend in HEADLESS_GL:
        if headless_gl_works(backend):
            log(f"no display for GLFW: rendering with MUJOCO_GL={backend}")
            os.environ["MUJOCO_GL"] = backend
            os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    raise SystemExit("no display (DISPLAY unset) for MuJoCo's default GL backend (GLFW), and it cannot render "
                     f"headless here with any of {', '.join(HEADLESS_GL)}: install EGL (libegl1 with Mesa or your "
                     "GPU's driver) or OSMesa (libosmesa6) and set MUJOCO_GL=egl or MUJOCO_GL=osmesa, or run with "
                     "a display (MUJOCO_GL=disable when no camera is rendered, cameras:=none)")
