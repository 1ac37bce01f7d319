#!/bin/sh
# What the image needs from the OS: $PYTHON (3.11) with venv, and make. The local Debian base
# has them; a CUDA base image (Ubuntu; conda's python in the PyTorch ones) gets what it lacks
# from apt, which needs network.
set -eu
missing=""
command -v make >/dev/null || missing="make"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing="$missing $PYTHON $PYTHON-venv"
[ -n "$missing" ] || exit 0
if ! command -v apt-get >/dev/null; then
  echo "os-packages.sh: the base image lacks$missing and has no apt-get" >&2; exit 1
fi
apt-get update
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing libgomp1 ca-certificates
rm -rf /var/lib/apt/lists/*
