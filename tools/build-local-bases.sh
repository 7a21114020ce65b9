#!/usr/bin/env bash
# tools/build-local-bases.sh [--force] [IMAGE...]      IMAGE: ray mlflow postgres redis prometheus
#                                                      redis-exporter postgres-exporter (default: the first four)
#
# The `local` image source (config.yaml images.source: local, or auto without a registry): builds,
# from Debian packages and PyPI wheels only, base images that reproduce the documented contract
# of the official images and nothing more (docs/images.md lists every fact and its source):
#   cslr-local/ray:$RAY_VERSION        stands for rayproject/ray:$RAY_VERSION-py311-{cpu,gpu} (no CUDA)
#   cslr-local/mlflow:$MLFLOW_VERSION  stands for ghcr.io/mlflow/mlflow:v$MLFLOW_VERSION
#   cslr-local/postgres:15             stands for postgres:15 (Debian's PostgreSQL 15)
#   cslr-local/redis:7                 stands for redis:7 (Debian's redis-server 7)
#   cslr-local/prometheus:2            stands for prom/prometheus:v2 (Debian's Prometheus 2.42;
#                                      only for services.monitoring, never built by default)
#   cslr-local/redis-exporter:1        stands for oliver006/redis_exporter:v1 (Debian's 1.45;
#                                      services.monitoring with Redis, never built by default)
#   cslr-local/postgres-exporter:0.11  stands for quay.io/prometheuscommunity/postgres-exporter
#                                      (Debian's 0.11; services.monitoring with MLflow, idem)
# The project's own images (compose/*/Dockerfile) are then built FROM these exactly as FROM the
# official ones. Called by `inv up` (cslr/images.py) and `make bases`; needs root (debootstrap,
# chroot) and a running engine. Python wheels come from the wheelhouse (`inv wheelhouse`,
# $CSLR_WHEELHOUSE, default <repo>/wheelhouse), installed with --no-index: nothing is fetched
# from PyPI inside the chroot.
#
# Idempotent: every image carries LABEL org.cslr.local.inputs-hash = sha256 of its inputs (this
# script, tools/local-bases/<name>/*, the versions); rebuilt only when that changed (or --force).
# Cache (outside the repo): $CSLR_LOCAL_CACHE (default /var/cache/cslr-local)/
#     debootstrap/   bookworm minbase rootfs tarball;  apt-archives/  .deb files
# Exit codes: 0 built or up to date; 1 a build step failed; 2 bad arguments / not root / no engine.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$REPO/tools/build-local-bases.sh"
IMGDIR="$REPO/tools/local-bases"
CACHE="${CSLR_LOCAL_CACHE:-${CSLR_TEST_CACHE:-/var/cache/cslr-local}}"
WHEELHOUSE="${CSLR_WHEELHOUSE:-$REPO/wheelhouse}"
RAY_VERSION="${RAY_VERSION:-2.60.0}"
MLFLOW_VERSION="${MLFLOW_VERSION:-3.17.2}"
SUITE=bookworm
ARCH=amd64
MIRROR="${CSLR_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${CSLR_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
LABEL_KEY=org.cslr.local.inputs-hash

FORCE=0
WANT=()
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,29p' "$SELF"; exit 0 ;;
    postgres|redis|ray|mlflow|prometheus|redis-exporter|postgres-exporter) WANT+=("$a") ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done
[ ${#WANT[@]} -eq 0 ] && WANT=(postgres redis ray mlflow)

log() { echo "[build-local-bases $(date +%H:%M:%S)] $*" >&2; }
die() { echo "[build-local-bases] ERROR: $*" >&2; exit 1; }
usage() { echo "[build-local-bases] $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || usage "must run as root (debootstrap/chroot): sudo make bases"
docker info >/dev/null 2>&1 || usage "the Docker engine is not answering"

# Image definitions: tags (first = primary) and `docker import --change` lines.
COMMON_ENV=(
  "ENV LANG=C.UTF-8"
  "ENV LC_ALL=C.UTF-8"
)
image_def() {
  TAGS=(); CHANGES=("${COMMON_ENV[@]}"); NEEDS_WHEELS=0
  case "$1" in
    ray)  # docker/base-deps/Dockerfile of ray-project/ray
      TAGS=("cslr-local/ray:$RAY_VERSION"); NEEDS_WHEELS=1
      CHANGES+=(
        "ENV PATH=/home/ray/anaconda3/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "ENV TZ=America/Los_Angeles"
        "ENV HOME=/home/ray"
        "USER 1000"
        "WORKDIR /home/ray"
        'CMD ["/bin/bash"]'
        "LABEL org.cslr.local.stands-for=rayproject/ray:$RAY_VERSION-py311"
      ) ;;
    mlflow)  # docker/Dockerfile of mlflow/mlflow
      TAGS=("cslr-local/mlflow:$MLFLOW_VERSION"); NEEDS_WHEELS=1
      CHANGES+=(
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "WORKDIR /"
        'CMD ["python3"]'
        "LABEL org.cslr.local.stands-for=ghcr.io/mlflow/mlflow:v$MLFLOW_VERSION"
      ) ;;
    postgres)
      TAGS=(cslr-local/postgres:15)
      CHANGES+=(
        "ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "ENV PG_MAJOR=15"
        "ENV PGDATA=/var/lib/postgresql/data"
        "VOLUME /var/lib/postgresql/data"
        "EXPOSE 5432"
        "STOPSIGNAL SIGINT"
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
        'CMD ["postgres"]'
        "LABEL org.cslr.local.stands-for=postgres:15"
      ) ;;
    redis)
      TAGS=(cslr-local/redis:7)
      CHANGES+=(
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "VOLUME /data"
        "WORKDIR /data"
        "EXPOSE 6379"
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
        'CMD ["redis-server"]'
        "LABEL org.cslr.local.stands-for=redis:7"
      ) ;;
    prometheus)  # Dockerfile of prometheus/prometheus
      TAGS=(cslr-local/prometheus:2)
      CHANGES+=(
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "USER nobody"
        "WORKDIR /prometheus"
        "VOLUME /prometheus"
        "EXPOSE 9090"
        'ENTRYPOINT ["/bin/prometheus"]'
        'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
        "LABEL org.cslr.local.stands-for=prom/prometheus:v2"
      ) ;;
    redis-exporter)  # Dockerfile of oliver006/redis_exporter (target scratch-release)
      TAGS=(cslr-local/redis-exporter:1)
      CHANGES+=(
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "USER 59000:59000"
        "EXPOSE 9121"
        'ENTRYPOINT ["/redis_exporter"]'
        "LABEL org.cslr.local.stands-for=oliver006/redis_exporter:v1"
      ) ;;
    postgres-exporter)  # Dockerfile of prometheus-community/postgres_exporter
      TAGS=(cslr-local/postgres-exporter:0.11)
      CHANGES+=(
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "USER nobody"
        "EXPOSE 9187"
        'ENTRYPOINT ["/bin/postgres_exporter"]'
        "LABEL org.cslr.local.stands-for=quay.io/prometheuscommunity/postgres-exporter:v0"
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
    echo "suite=$SUITE arch=$ARCH ray=$RAY_VERSION mlflow=$MLFLOW_VERSION"
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
  if [ "$NEEDS_WHEELS" = 1 ]; then
    WHEELS="$(cd "$WHEELHOUSE" 2>/dev/null && pwd)" || usage "no wheelhouse at $WHEELHOUSE: run \`inv wheelhouse\` first"
  fi

  local root="$CACHE/build/$name.$$"
  ACTIVE_ROOT="$root"
  safe_rm_root "$root"; mkdir -p "$root"
  tar --numeric-owner -xpf "$BASE_TAR" -C "$root"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
  mkdir -p "$root/tmp/image"
  cp -a "$IMGDIR/$name/." "$root/tmp/image/"
  printf 'RAY_VERSION=%s\nMLFLOW_VERSION=%s\n' "$RAY_VERSION" "$MLFLOW_VERSION" >"$root/tmp/image/versions.env"
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
    die "$name: setup in chroot failed (full log: $blog; a missing wheel means: run \`inv wheelhouse\`)"
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
  local tmp_tag="cslr-local/rootfs-$name:$hash" ctx="$CACHE/build/$name.ctx.$$"
  log "$name: docker import rootfs -> $tmp_tag"
  tar --numeric-owner --xattrs -C "$root" -c \
      --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' . \
    | docker import --platform "linux/$ARCH" - "$tmp_tag" >/dev/null
  safe_rm_root "$root"; ACTIVE_ROOT=""
  mkdir -p "$ctx"
  {
    echo "FROM $tmp_tag"
    printf '%s\n' "${CHANGES[@]}"
    echo "LABEL org.cslr.local.base=debian-$SUITE-minbase"
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
docker images --filter 'reference=cslr-local/*' --format '{{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}' >&2
