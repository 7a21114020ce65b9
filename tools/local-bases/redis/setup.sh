#!/bin/bash
# Runs inside the image's chroot (see tools/build-local-bases.sh).
set -euxo pipefail
apt-get install -y --no-install-recommends redis-server redis-tools
install -m 0755 /tmp/image/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
mkdir -p /data
chown redis:redis /data
redis-server --version
