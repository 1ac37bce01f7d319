#!/usr/bin/env bash
# The base image a build here uses, printed on stdout. IMAGE when the engine has it or can pull
# it. Where no registry answers, the default (a CUDA base) gives way to LOCAL, the Debian base
# base-image.sh makes here, so `make image` works offline; an IMAGE the user named does not.
#   resolve-base.sh [--no-pull] IMAGE LOCAL [fallback]
# --no-pull only looks at what the engine has (for naming an image already built).
set -euo pipefail
docker=${DOCKER:-docker}
pull=1
if [ "${1:-}" = --no-pull ]; then pull=0; shift; fi
image=${1:?usage: resolve-base.sh [--no-pull] IMAGE LOCAL [fallback]}
local_base=${2:?usage: resolve-base.sh [--no-pull] IMAGE LOCAL [fallback]}
fallback=${3:-}
here=$(dirname "$0")

have() { "$docker" image inspect "$1" >/dev/null 2>&1; }
use_local() {
  if [ $pull = 1 ] && ! have "$local_base"; then "$here/base-image.sh" "$local_base" >&2; fi
  echo "$local_base"
}

if have "$image"; then echo "$image"; exit 0; fi
if [ "$image" = "$local_base" ]; then use_local; exit 0; fi
if [ $pull = 0 ]; then
  if [ -n "$fallback" ]; then echo "$local_base"; else echo "$image"; fi
  exit 0
fi
if err=$("$docker" pull --quiet "$image" 2>&1 >/dev/null); then echo "$image"; exit 0; fi
reason=$(printf '%s\n' "$err" | grep -v '^$' | tail -1)
if [ -z "$fallback" ]; then
  echo "image: BASE_IMAGE=$image is not in the engine and cannot be pulled: $reason" >&2
  exit 1
fi
echo "image: the default base $image cannot be pulled ($reason); building on the local Debian base $local_base instead (BASE_IMAGE= names another)" >&2
use_local
