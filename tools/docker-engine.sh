#!/usr/bin/env bash
# tools/docker-engine.sh [--if-absent]
#
# `make engine` (explicit) and `make up` (--if-absent): make sure a Docker engine answers.
#   - An engine that already answers is used as it is, whoever installed it (Docker CE, Desktop,
#     rootless, a distribution's package): nothing is installed, started or linked.
#   - Another Docker that is installed but not answering (docker-ce, Desktop, moby, podman-docker,
#     a rootless daemon) is never replaced: the script says how to start it and exits 1.
#   - Only on a Debian/Ubuntu machine with no Docker at all, as root, it installs Debian's
#     docker.io (dockerd, containerd, runc, docker-init) and starts dockerd (systemd when it runs
#     the machine, else in the background; log /var/log/cslr-dockerd.log). With --if-absent it
#     says first that this is what `make up` is about to do.
# It never touches ~/.docker or the Docker CLI plugin folders: the project calls its Compose
# binary by path (cslr/compose.py compose_binary).
# Exit codes: 0 an engine answers; 1 it could not be made to; 2 bad arguments.
set -euo pipefail

MODE=explicit
case "${1:-}" in
  "") ;;
  --if-absent) MODE=if-absent ;;
  -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--if-absent]" >&2; exit 2 ;;
esac
LOG=/var/log/cslr-dockerd.log
WAIT_SECS="${CSLR_DOCKERD_WAIT:-90}"

log() { echo "[docker-engine] $*" >&2; }
die() { echo "[docker-engine] ERROR: $*" >&2; exit 1; }
engine_up() { timeout 10 docker info >/dev/null 2>&1; }

if engine_up; then
  log "an engine answers: $(docker version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}' 2>/dev/null || echo '?'); nothing to install"
  exit 0
fi

# --- preflight: no impact yet ----------------------------------------------------
other=()
for p in docker-ce docker-ce-rootless-extras docker-desktop moby-engine podman-docker containerd.io; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && other+=("$p")
done
if command -v dockerd >/dev/null 2>&1 && ! dpkg-query -S "$(command -v dockerd)" 2>/dev/null | grep -q '^docker.io:'; then
  other+=("$(command -v dockerd)")
fi
[ -S "${XDG_RUNTIME_DIR:-/run/user/$(id -u)}/docker.sock" ] && other+=("rootless Docker (${XDG_RUNTIME_DIR:-/run/user/$(id -u)}/docker.sock)")
[ -d "$HOME/.docker/desktop" ] && other+=("Docker Desktop ($HOME/.docker/desktop)")
if [ ${#other[@]} -gt 0 ]; then
  die "Docker is installed here (${other[*]}) but its engine does not answer \`docker info\`. Start it (\`sudo systemctl start docker\`, or open Docker Desktop; for a rootless engine \`systemctl --user start docker\`) — this script never replaces another Docker."
fi
dpkg-query -W -f='${Status}' docker.io 2>/dev/null | grep -q "install ok installed" && have_docker_io=1 || have_docker_io=0
if [ "$(id -u)" != 0 ]; then
  die "no Docker engine answers. Install Docker (Docker CE: https://docs.docker.com/engine/install/ , or Docker Desktop) and add your user to the \`docker\` group; or, on Debian/Ubuntu without any Docker, run \`sudo make engine\`."
fi
. /etc/os-release 2>/dev/null || true
case " ${ID:-} ${ID_LIKE:-} " in
  *" debian "*|*" ubuntu "*) ;;
  *) die "no Docker engine answers, and installing one is only automated on Debian/Ubuntu (this is ${PRETTY_NAME:-unknown}). Install Docker: https://docs.docker.com/engine/install/" ;;
esac
if [ "$MODE" = if-absent ] && [ "$have_docker_io" = 0 ]; then
  log "no Docker at all on this machine: installing Debian's docker.io, as \`sudo make engine\` does"
fi

# --- start impacting things -------------------------------------------------------
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
  log "engine answering"
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
    if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && systemctl start docker 2>/dev/null && wait_engine "$WAIT_SECS"; then
      started=1
    fi
    for drv in overlay2 fuse-overlayfs vfs; do
      [ "$started" = 1 ] && break
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

log "ready"
[ -n "$API_EXPORT" ] && echo "$API_EXPORT"
exit 0
