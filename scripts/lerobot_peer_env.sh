#!/usr/bin/env bash
# LeRobot itself (0.4.4, its diffusion policy and training code) in an environment of its own, for
# the side-by-side benchmark `python -m benchmarks --only peer` (benchmarks/peer.py). Never a
# dependency of the project: LeRobot pins torch < 2.11, the project uses 2.13. About 8 GB (the
# PyPI torch wheel brings CUDA libraries; it runs on the CPU too).
set -euo pipefail
ENV="${1:-.venv-lerobot-peer}"
# torchcodec, LeRobot's default video decoder, loads the system's FFmpeg libraries (the end-to-end
# comparison decodes LeRobot's own videos through it, as a LeRobot user's training does)
if ! ldconfig -p | grep "libavutil.so" > /dev/null; then   # (grep -q would end the pipe early: pipefail)
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg
fi
if [ ! -x "$ENV/bin/python" ]; then
    python3.11 -m venv "$ENV"
fi
"$ENV/bin/pip" install -q --disable-pip-version-check "lerobot==0.4.4" "torch==2.10.*" "torchvision==0.25.*" \
    2>&1 | grep -v "^WARNING: Location" || true
"$ENV/bin/python" -c "import lerobot.policies.diffusion.modeling_diffusion" && echo "lerobot peer env: ready ($ENV)"
