#!/usr/bin/env bash
# tools/build-test-images.sh [--force] [IMAGE...]      IMAGE: postgres redis ray (default: all)
#
# Builds, locally and without any container registry, the images the
# end-to-end tests use (linux/amd64, Debian bookworm minbase rootfs made with
# debootstrap, packages installed in a chroot, then `docker import`ed):
#   cslr-test/postgres:15     Debian PostgreSQL 15 + official-style entrypoint
#   cslr-test/redis:7         Debian redis-server 7 + official-style entrypoint
#   cslr-test/ray:2.60.0      python3 + ray[default], mlflow, marimo, psycopg2, redis, requests
#     (same image also tagged cslr-test/mlflow:3.17.2, cslr-test/mlflow:3.18.0,
#      cslr-test/marimo:0.25.2 -- see tools/test-images/ray/requirements.txt)
#
# Idempotent: every image carries LABEL org.cslr.test.inputs-hash = sha256 of
# its inputs (this script + tools/test-images/<name>/*); it is rebuilt only
# when that hash changed (or with --force). Caches (outside the repo):
#   $CSLR_TEST_CACHE (default /var/cache/cslr-test)/
#     debootstrap/   bookworm minbase rootfs tarball
#     apt-archives/  .deb files used in the chroots
#     wheels/ray-<hash>/  wheels of requirements.lock (pip download on the host)
# Needs root and a running engine (tools/docker-engine.sh).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$REPO/tools/build-test-images.sh"
IMGDIR="$REPO/tools/test-images"
CACHE="${CSLR_TEST_CACHE:-/var/cache/cslr-test}"
SUITE=bookworm
ARCH=amd64
MIRROR="${CSLR_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${CSLR_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
LABEL_KEY=org.cslr.test.inputs-hash
PIP="${CSLR_HOST_PIP:-}"

FORCE=0
WANT=()
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,25p' "$SELF"; exit 0 ;;
    postgres|redis|ray) WANT+=("$a") ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done
[ ${#WANT[@]} -eq 0 ] && WANT=(postgres redis ray)

log() { echo "[build-test-images $(date +%H:%M:%S)] $*" >&2; }
die() { echo "[build-test-images] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap/chroot)"
docker info >/dev/null 2>&1 || die "docker engine not answering; run tools/docker-engine.sh first"

# Image definitions: tags (first = primary) and `docker import --change` lines.
COMMON_ENV=(
  "ENV LANG=C.UTF-8"
  "ENV LC_ALL=C.UTF-8"
)
image_def() {
  TAGS=(); CHANGES=("${COMMON_ENV[@]}")
  case "$1" in
    ray)
      TAGS=(cslr-test/ray:2.60.0 cslr-test/mlflow:3.17.2 cslr-test/mlflow:3.18.0 cslr-test/marimo:0.25.2)
      CHANGES+=(
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "ENV PYTHONUNBUFFERED=1"
        "ENV PIP_NO_CACHE_DIR=1"
        "ENV PIP_DISABLE_PIP_VERSION_CHECK=1"
        "ENV PIP_BREAK_SYSTEM_PACKAGES=1"
        "WORKDIR /"
        'CMD ["python3"]'
        "LABEL org.cslr.test.versions=ray==2.60.0,mlflow==3.17.2,marimo==0.25.2"
      ) ;;
    postgres)
      TAGS=(cslr-test/postgres:15)
      CHANGES+=(
        "ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "ENV PG_MAJOR=15"
        "ENV PGDATA=/var/lib/postgresql/data"
        "VOLUME /var/lib/postgresql/data"
        "EXPOSE 5432"
        "STOPSIGNAL SIGINT"
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
        'CMD ["postgres"]'
      ) ;;
    redis)
      TAGS=(cslr-test/redis:7)
      CHANGES+=(
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "VOLUME /data"
        "WORKDIR /data"
        "EXPOSE 6379"
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
        'CMD ["redis-server"]'
      ) ;;
  esac
}

# ---------------------------------------------------------------------------
mkdir -p "$CACHE"/{debootstrap,apt-archives/partial,wheels,build}
exec 9>"$CACHE/build.lock"
flock -w 3600 9 || die "another build holds $CACHE/build.lock"

export DEBIAN_FRONTEND=noninteractive
host_apt_updated=0
host_apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $host_apt_updated = 0 ]; then apt-get update -qq >&2 || true; host_apt_updated=1; fi
  log "host: apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

sha() { sha256sum | cut -c1-64; }

inputs_hash() {  # inputs_hash NAME
  {
    echo "suite=$SUITE arch=$ARCH"
    echo "== build script"; cat "$SELF"
    local f
    while IFS= read -r f; do
      echo "== $f"; cat "$IMGDIR/$1/$f"
    done < <(cd "$IMGDIR/$1" && find . -type f | LC_ALL=C sort)
  } | sha
}

# --- mounts / chroot helpers ---------------------------------------------------
ACTIVE_ROOT=""
mounts_under() { awk -v r="$1/" 'index($2, r) == 1 {print $2}' /proc/self/mounts; }
umount_all() {
  local root="$1" m _try
  for _try in 1 2 3; do
    for m in $(mounts_under "$root" | sort -r); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    [ -z "$(mounts_under "$root")" ] && return 0
    sleep 1
  done
  return 1
}
safe_rm_root() {
  local root="$1"
  [ -n "$root" ] && [ -d "$root" ] || return 0
  case "$root" in "$CACHE"/build/*) ;; *) die "refusing to remove $root" ;; esac
  if ! umount_all "$root"; then
    die "could not unmount everything under $root; NOT removing it: $(mounts_under "$root" | tr '\n' ' ')"
  fi
  rm -rf --one-file-system "$root"
}
cleanup() {
  local rc=$?
  if [ -n "$ACTIVE_ROOT" ]; then safe_rm_root "$ACTIVE_ROOT" || true; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- base rootfs (debootstrap minbase), cached as a tarball ---------------------
BASE_KEY="$(printf 'debootstrap v2 %s %s minbase %s\n' "$SUITE" "$ARCH" "$MIRROR" | sha | cut -c1-16)"
BASE_TAR="$CACHE/debootstrap/$SUITE-minbase-$ARCH-$BASE_KEY.tar"
ensure_base() {
  [ -s "$BASE_TAR" ] && { log "base rootfs: cached $BASE_TAR"; return 0; }
  host_apt_install debootstrap debian-archive-keyring
  local root="$CACHE/build/base.$$"
  ACTIVE_ROOT="$root"
  safe_rm_root "$root"; mkdir -p "$root"
  log "debootstrap --variant=minbase $SUITE (log: $CACHE/debootstrap/debootstrap.log)"
  local t0=$SECONDS
  if ! debootstrap --variant=minbase --arch="$ARCH" \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
        --cache-dir="$CACHE/apt-archives" \
        "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap/debootstrap.log" 2>&1; then
    tail -n 30 "$CACHE/debootstrap/debootstrap.log" >&2
    tail -n 30 "$root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    die "debootstrap failed"
  fi
  cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
  # container-friendly apt defaults (like the official debian image)
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
  cat >"$root/etc/apt/apt.conf.d/docker-no-languages" <<'EOF'
Acquire::Languages "none";
EOF
  cat >"$root/etc/apt/apt.conf.d/docker-no-recommends" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker-minimal" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/log/* "$root"/debootstrap
  tar --numeric-owner -C "$root" -cf "$BASE_TAR.tmp" .
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  safe_rm_root "$root"; ACTIVE_ROOT=""
  log "base rootfs: built in $((SECONDS - t0))s -> $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
}

# --- wheels for the ray image (pip download on the host, cached) ----------------
host_pip() {
  if [ -n "$PIP" ]; then echo "$PIP"; return; fi
  local py
  for py in "$REPO/.venv/bin/python" python3.11 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -m pip --version >/dev/null 2>&1; then
      "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || continue
      echo "$py -m pip"; return
    fi
  done
  die "no Python 3.11 with pip on the host (needed to download cp311 wheels)"
}
ensure_wheels() {  # ensure_wheels NAME -> sets WHEELS
  local lock="$IMGDIR/$1/requirements.lock" key
  key="$(sha <"$lock" | cut -c1-16)"
  WHEELS="$CACHE/wheels/$1-$key"
  [ -f "$WHEELS/.complete" ] && { log "wheels: cached $WHEELS ($(ls "$WHEELS" | wc -l) files)"; return 0; }
  local pip t0=$SECONDS; pip="$(host_pip)"
  mkdir -p "$WHEELS"
  log "wheels: $pip download -r $lock -> $WHEELS"
  # wheels only, for the host's CPython 3.11 / glibc x86_64 = bookworm's python3
  # reuse wheels of a previous lock of this image instead of downloading them again
  local seed=() d
  for d in "$CACHE/wheels/$1"-*; do
    [ "$d" != "$WHEELS" ] && [ -f "$d/.complete" ] && seed+=(--find-links "$d")
  done
  $pip download --quiet --dest "$WHEELS" --only-binary=:all: "${seed[@]}" -r "$lock" \
    >&2 2> >(grep -v '^WARNING: Location' >&2) || die "pip download failed"
  touch "$WHEELS/.complete"
  # keep only the current wheel set of this image
  for d in "$CACHE/wheels/$1"-*; do
    [ "$d" != "$WHEELS" ] && [ -d "$d" ] && rm -rf "$d" && log "wheels: pruned old $d"
  done
  log "wheels: downloaded in $((SECONDS - t0))s ($(du -sh "$WHEELS" | cut -f1))"
}

# --- one image -------------------------------------------------------------------
image_label() { docker image inspect -f "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$1" 2>/dev/null || true; }

build_one() {
  local name="$1" hash t0=$SECONDS
  image_def "$name"
  hash="$(inputs_hash "$name")"
  local primary="${TAGS[0]}" tag
  if [ $FORCE = 0 ] && [ "$(image_label "$primary")" = "$hash" ]; then
    for tag in "${TAGS[@]:1}"; do
      [ "$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null)" = "$(docker image inspect -f '{{.Id}}' "$primary")" ] \
        || docker tag "$primary" "$tag"
    done
    log "$name: up to date (${hash:0:12}) ${TAGS[*]}"
    return 0
  fi
  log "$name: building (inputs ${hash:0:12})"
  local old_id; old_id="$(docker image inspect -f '{{.Id}}' "$primary" 2>/dev/null || true)"
  ensure_base
  WHEELS=""
  [ -f "$IMGDIR/$name/requirements.lock" ] && ensure_wheels "$name"

  local root="$CACHE/build/$name.$$"
  ACTIVE_ROOT="$root"
  safe_rm_root "$root"; mkdir -p "$root"
  tar --numeric-owner -xpf "$BASE_TAR" -C "$root"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
  mkdir -p "$root/tmp/image"
  cp -a "$IMGDIR/$name/." "$root/tmp/image/"
  mount -t proc proc "$root/proc"
  mount --bind "$CACHE/apt-archives" "$root/var/cache/apt/archives"
  if [ -n "$WHEELS" ]; then
    mkdir -p "$root/wheels"; mount --bind "$WHEELS" "$root/wheels"; mount -o remount,bind,ro "$root/wheels"
  fi
  # keep downloaded .debs in the host cache: no docker-clean hook while building
  mv "$root/etc/apt/apt.conf.d/docker-clean" "$root/docker-clean.hold"
  local blog="$CACHE/build/$name.log"
  log "$name: chroot setup (log: $blog)"
  if ! chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        /bin/bash -euxo pipefail -c 'apt-get update -qq && bash /tmp/image/setup.sh' >"$blog" 2>&1; then
    tail -n 40 "$blog" >&2
    die "$name: setup in chroot failed (full log: $blog)"
  fi
  # clean up the rootfs
  umount_all "$root" || die "$name: cannot unmount chroot mounts"
  mv "$root/docker-clean.hold" "$root/etc/apt/apt.conf.d/docker-clean"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
         "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.cache "$root"/wheels \
         "$root"/usr/sbin/policy-rc.d "$root"/var/log/apt "$root"/var/log/*.log
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/*
  : >"$root/etc/resolv.conf"
  chmod 1777 "$root/tmp" "$root/var/tmp"

  # docker import cannot set STOPSIGNAL on engine 20.10, so the rootfs is
  # imported bare and the config is applied by a one-step (legacy, offline)
  # `docker build` FROM it: all instructions below are metadata-only.
  local tmp_tag="cslr-test/rootfs-$name:$hash" ctx="$CACHE/build/$name.ctx.$$"
  log "$name: docker import rootfs -> $tmp_tag"
  tar --numeric-owner --xattrs -C "$root" -c \
      --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' . \
    | docker import --platform "linux/$ARCH" - "$tmp_tag" >/dev/null
  safe_rm_root "$root"; ACTIVE_ROOT=""
  mkdir -p "$ctx"
  {
    echo "FROM $tmp_tag"
    printf '%s\n' "${CHANGES[@]}"
    echo "LABEL org.cslr.test.base=debian-$SUITE-minbase"
    echo "LABEL $LABEL_KEY=$hash"
  } >"$ctx/Dockerfile"
  log "$name: docker build (config only) -> $primary"
  if ! DOCKER_BUILDKIT=0 docker build -q --platform "linux/$ARCH" -t "$primary" "$ctx" >"$ctx/build.log" 2>&1; then
    cat "$ctx/build.log" >&2; rm -rf "$ctx"; die "$name: docker build failed"
  fi
  rm -rf "$ctx"
  docker rmi "$tmp_tag" >/dev/null 2>&1 || true
  for tag in "${TAGS[@]:1}"; do docker tag "$primary" "$tag"; done
  # drop the previous build (and its metadata-only parent chain) if now untagged
  if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$primary")" ] \
     && [ -z "$(docker image inspect -f '{{join .RepoTags ""}}' "$old_id" 2>/dev/null)" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 && log "$name: removed previous image ${old_id:7:12}" || true
  fi
  [ "$(image_label "$primary")" = "$hash" ] || die "$name: label missing on $primary after import"
  log "$name: built in $((SECONDS - t0))s: ${TAGS[*]} ($(docker image inspect -f '{{.Size}}' "$primary" | awk '{printf "%.0f MB", $1/1e6}'))"
}

T0=$SECONDS
for n in "${WANT[@]}"; do build_one "$n"; done
log "done in $((SECONDS - T0))s"
docker images --filter 'reference=cslr-test/*' --format '{{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}' >&2
