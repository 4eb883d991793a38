#!/usr/bin/env bash
# An environment of LeRobot's own, to load our exports with its reader (tests/test_lerobot_reader.py).
# Its own venv: lerobot-dataset needs torch with torchvision (and torchcodec, which needs FFmpeg's
# shared libraries), versions the project's venv does not use.
set -euo pipefail
ENV="${1:-.venv-lerobot}"
if ! ldconfig -p | grep -q libavcodec; then
    echo "lerobot env: installing FFmpeg's libraries (torchcodec decodes videos with them)"
    apt-get install -y -q --no-install-recommends ffmpeg >/dev/null
fi
if [ ! -x "$ENV/bin/python" ]; then
    python3.11 -m venv "$ENV"
fi
"$ENV/bin/pip" install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" "lerobot-dataset==0.4.4" \
    "torchcodec==0.17.0" 2>&1 | grep -v "^WARNING: Location" || true
"$ENV/bin/python" -c "import ledataset, torchcodec" && echo "lerobot env: ready ($ENV)"
