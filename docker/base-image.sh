#!/usr/bin/env bash
# A Debian bookworm base image made here, for builds that cannot pull one: debootstrap from
# the Debian mirror apt is configured with (MIRROR= overrides), then `docker import`. It holds
# what the image's stages need from the OS: Python 3.11 with venv, make, the C++ runtimes.
#   base-image.sh NAME    (root; needs debootstrap and a reachable engine)
set -euo pipefail
name=${1:?usage: base-image.sh NAME}
command -v debootstrap >/dev/null || { echo "base-image.sh: debootstrap not installed (apt-get install -y debootstrap)" >&2; exit 1; }

mirror=${MIRROR:-}
if [ -z "$mirror" ]; then  # deb822 sources first, then one-line ones; skip [options]
  mirror=$(awk '/^URIs:/{u=$2} /^Suites:/{for(i=2;i<=NF;i++) if($i=="bookworm"){print u; exit}}' \
             /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
fi
if [ -z "$mirror" ]; then
  mirror=$(awk '$1=="deb"{i=2; if($i ~ /^\[/) while($i !~ /\]$/) i++; if($i ~ /^\[|\]$/) i++;
                if($(i+1)=="bookworm"){print $i; exit}}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,make,libgomp1,libstdc++6,ca-certificates \
  bookworm "$root" "$mirror" > "$root.log" 2>&1 || { tail -5 "$root.log" >&2; echo "base-image.sh: debootstrap from $mirror failed (log: $root.log)" >&2; exit 1; }
rm -f "$root.log"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$name" > /dev/null
echo "base image $name from $mirror"
