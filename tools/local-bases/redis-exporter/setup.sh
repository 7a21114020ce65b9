#!/bin/bash
# Runs inside the image's chroot (see tools/build-local-bases.sh): Debian's Redis exporter (1.45)
# with the contract of the official oliver006/redis_exporter image (docs/images.md): the binary
# at /redis_exporter (the entrypoint), listening on :9121, configured by REDIS_ADDR and
# REDIS_PASSWORD, run as uid:gid 59000:59000 (no passwd entry, as in the official image).
set -euxo pipefail
apt-get install -y --no-install-recommends prometheus-redis-exporter
ln -s /usr/bin/prometheus-redis-exporter /redis_exporter
[ -x /redis_exporter ]
# Debian's service user, unit and defaults are not part of the contract: nothing starts it but the entrypoint.
rm -f /etc/default/prometheus-redis-exporter /etc/init.d/prometheus-redis-exporter /etc/logrotate.d/prometheus-redis-exporter
/redis_exporter -version
