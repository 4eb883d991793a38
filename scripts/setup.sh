#!/usr/bin/env bash
# One-time (and idempotent) set-up: Debian packages the Python wheels need, then the venv.
# Called by `make setup`; safe to run again, quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

# --- Debian packages: libusb for librealsense, EGL/Mesa for headless MuJoCo rendering, gcc for
# the image encoders' GroupNorm kernel (robot_learning/nets/group_norm_kernel.py) ---
need=()
for pkg in libusb-1.0-0 libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri gcc libc6-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# --- the venv ---
[ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check -q"
# torch first and pinned: any other spec would pull the CUDA build.
$VENV/bin/python -c "import torch" 2>/dev/null || $PIP install torch==2.13.0
$PIP install -r requirements-ros.txt
$PIP install -e ".[learning,devices,dev]"
# PEP 517 build: an older pip (Debian's 23.0) would otherwise run `setup.py install`, which puts
# copies of the nodes in lib/robot_learning_ros/ itself, in the way of the links below
$PIP install --use-pep517 ./ros2_ws/src/robot_learning_ros

# --- the ament layout ros2 launch expects: a package's nodes in <prefix>/lib/<package>/ ---
# colcon installs them there (setup.cfg); pip puts console scripts in bin/ only, and ros2 launch
# then refuses with "libexec directory ... does not exist". Link every console-script entry point
# of the installed package there; links of entry points that are gone are removed first.
LIBEXEC="$VENV/lib/robot_learning_ros"
NODES=$("$VENV/bin/python" -c 'from importlib.metadata import distribution
print(*sorted(e.name for e in distribution("robot_learning_ros").entry_points if e.group == "console_scripts"))')
mkdir -p "$LIBEXEC"
find "$LIBEXEC" -maxdepth 1 -type l -delete
for exe in $NODES; do
    ln -sf "../../bin/$exe" "$LIBEXEC/$exe"  # -f: over a copy an older set-up left there
done
echo "setup: done ($VENV)"
