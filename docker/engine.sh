#!/usr/bin/env bash
# A Docker engine for this machine's user, for CI and development where no daemon runs:
# images and layers persist in DATA (so a second build reuses them), sockets in a temp dir.
#   eval "$(docker/engine.sh start [DATA])"   sets DOCKER_HOST and CRYGEN_DOCKERD_PID
#   docker/engine.sh stop                      stops the engine started above, by its PID
set -euo pipefail
case ${1:-} in
  start)
    data=${2:-$HOME/.cache/crygen-docker}
    command -v dockerd >/dev/null || { echo "engine.sh: dockerd not installed (apt-get install -y docker.io)" >&2; exit 1; }
    mkdir -p "$data"
    run=$(mktemp -d /tmp/crygen-dockerd.XXXXXX)   # short: socket paths are limited to 108 bytes
    dockerd --host "unix://$run/docker.sock" --data-root "$data" --exec-root "$run/exec" \
      --pidfile "$run/docker.pid" --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
      > "$run/dockerd.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
      if DOCKER_HOST="unix://$run/docker.sock" docker version >/dev/null 2>&1; then
        echo "export DOCKER_HOST=unix://$run/docker.sock CRYGEN_DOCKERD_PID=$pid CRYGEN_DOCKERD_RUN=$run"
        exit 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    tail -5 "$run/dockerd.log" >&2
    kill "$pid" 2>/dev/null || true
    echo "engine.sh: dockerd did not start (log: $run/dockerd.log)" >&2
    exit 1 ;;
  stop)
    pid=${CRYGEN_DOCKERD_PID:?engine.sh stop: CRYGEN_DOCKERD_PID not set}
    kill "$pid" 2>/dev/null || exit 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if [ -n "${CRYGEN_DOCKERD_RUN:-}" ]; then
      # dockerd leaves namespaces mounted under its exec root (netns/default, after a
      # --network=host container): unmount them, deepest first, or the folder cannot go
      awk -v run="$CRYGEN_DOCKERD_RUN/" 'index($2, run) == 1 {print $2}' /proc/mounts | sort -r |
        while IFS= read -r m; do umount "$m"; done
      rm -rf "$CRYGEN_DOCKERD_RUN"
    fi ;;
  *) echo "usage: $0 start [DATA] | stop" >&2; exit 2 ;;
esac
