#!/bin/sh
# What the image needs from the OS: $PYTHON (3.11) with venv, and make. The local Debian base
# has them; a CUDA base image (Ubuntu) gets them from apt, which needs network.
set -eu
if command -v make >/dev/null && "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "os-packages.sh: the base image lacks make or $PYTHON with venv, and has no apt-get" >&2; exit 1
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
  make "$PYTHON" "$PYTHON-venv" libgomp1 ca-certificates
rm -rf /var/lib/apt/lists/*
