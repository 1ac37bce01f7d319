#!/usr/bin/env bash
# A short hash of what `make image` builds from: the project's files (tracked and untracked,
# not ignored), the demo data, the wheel names (CPU or CUDA torch) and the build arguments
# given, the first being the base image. Same inputs, same tag.   content-hash.sh BASE [BUILD_ARG...]
set -euo pipefail
cd "$(dirname "$0")/.."
{
  printf '%s\n' "$@"
  # the base image's id when the engine has it: a new base gives a new tag
  "${DOCKER:-docker}" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -co --exclude-standard
  else
    find . -path ./.git -prune -o -path './.venv*' -prune -o -path ./runs -prune -o -path ./docker/wheels -prune -o -type f -print | sed 's|^\./||'
  fi | { cat; echo data/alexandria/alexandria-random-1k.xyz; } | LC_ALL=C sort -u |
    while IFS= read -r f; do [ -f "$f" ] && sha256sum "$f"; done || true
  if [ -d docker/wheels ]; then ls docker/wheels; fi
} | sha256sum | cut -c1-12
