#!/usr/bin/env bash
# The compute environment's package lists in pip's three passes, read in this one place by
# `make setup` (install) and `make image` (wheels for a build without network). The first
# list is tagged at line ends (see the head of requirements-remote.txt); any further lists
# join its main pass, so one resolver run checks that they all agree.
#   requirements.sh install PYTHON VENV LIST [LIST...]   (pip options through PIP_* variables)
#   requirements.sh wheels  VENV_PYTHON DEST LIST [LIST...]
set -euo pipefail

usage() { echo "usage: $0 install PYTHON VENV LIST... | wheels VENV_PYTHON DEST LIST..." >&2; exit 2; }
[ $# -ge 4 ] || usage
mode=$1 py=$2 dir=$3
shift 3
for f in "$@"; do [ -f "$f" ] || { echo "$f: not found" >&2; exit 1; }; done
tagged=$1
shift

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
grep -vE '#\s*(no-build-isolation|no-deps)\s*$' "$tagged" > "$tmp/main.txt" || true
for f in "$@"; do printf -- '-r %s\n' "$(realpath "$f")" >> "$tmp/main.txt"; done
# PyG's extensions compile against the torch installed by the main pass.
grep -E '#\s*no-build-isolation\s*$' "$tagged" | sed 's/#.*//' > "$tmp/ext.txt" || true
grep -E '#\s*no-deps\s*$' "$tagged" | sed 's/#.*//' > "$tmp/nodeps.txt" || true
flags() { case $1 in ext) echo --no-build-isolation --no-deps ;; nodeps) echo --no-deps ;; esac; }
export MAX_JOBS=${MAX_JOBS:-2}

case $mode in
  install)
    [ -x "$dir/bin/python" ] || "$py" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --upgrade 'pip>=23.2'
    for p in main ext nodeps; do
      [ -s "$tmp/$p.txt" ] || continue  # pip refuses an empty list
      # shellcheck disable=SC2046
      "$dir/bin/python" -m pip install --quiet $(flags $p) -r "$tmp/$p.txt"
    done ;;
  wheels)
    # Built or fetched here, pip's wheel cache sparing the extensions a second compile; the
    # folder appears only when complete.
    mkdir "$tmp/wheels"
    "$py" -m pip download --quiet --no-deps -d "$tmp/wheels" "pip==$("$py" -m pip --version | cut -d' ' -f2)"
    for p in main ext nodeps; do
      [ -s "$tmp/$p.txt" ] || continue
      # shellcheck disable=SC2046
      "$py" -m pip wheel --quiet $(flags $p) -w "$tmp/wheels" -r "$tmp/$p.txt"
    done
    rm -rf "$dir.old"
    if [ -e "$dir" ]; then mv "$dir" "$dir.old"; fi
    mv "$tmp/wheels" "$dir"
    rm -rf "$dir.old" ;;
  *) usage ;;
esac
