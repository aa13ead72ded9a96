#!/usr/bin/env bash
# Set up a fresh clone: system audio libraries and the virtual environment at .venv.
#   ./setup.sh          live engine only (numpy, onnxruntime, webrtcvad, sounddevice, ...)
#   ./setup.sh --dev    plus training (TensorFlow, XGBoost, librosa, ...) and the test tools
set -euo pipefail
cd "$(dirname "$0")"
dev=0
[ "${1:-}" = "--dev" ] && dev=1

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }
pkgs="libportaudio2"
# the tests capture from a real PulseAudio server (a virtual microphone) and drive headless Chromium;
# asc-music is real music the bundle never heard (the non-speech tests); training the release bundle also
# reads singularity-music and drascula-music (see models/MODEL_CARD.md); haproxy: the scale-out test
# (tests/test_scaleout.py) puts it in front of two servers
[ $dev = 1 ] && pkgs="$pkgs pulseaudio pulseaudio-utils libasound2-plugins chromium asc-music haproxy"
[ "${2:-}" = "--train-music" ] && pkgs="$pkgs singularity-music drascula-music"
# the compiled feature kernel (realtime/_featurekernel.c) needs a C compiler and Python's headers; without them
# the install still works and the features run on numpy (about 2x slower per hop)
command -v cc >/dev/null 2>&1 || pkgs="$pkgs gcc libc6-dev"
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  2>/dev/null || pkgs="$pkgs python3-dev"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "setup: installing system packages:$missing"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ $dev = 1 ]; then
  .venv/bin/pip install -q -e '.[train,dev]'
else
  .venv/bin/pip install -q -e .
fi
echo "setup: ready (.venv; $(.venv/bin/python -m realtime --version))"
