#!/bin/bash
# Runs inside the image's chroot (see tools/build-local-bases.sh): Debian's PostgreSQL exporter
# (0.11) with the contract of the official quay.io/prometheuscommunity/postgres-exporter image
# (docs/images.md): the binary at /bin/postgres_exporter (the entrypoint), listening on :9187,
# configured by DATA_SOURCE_URI / DATA_SOURCE_USER / DATA_SOURCE_PASS (or their *_FILE), run as
# nobody; wget for healthchecks (the official image's busybox has it).
set -euxo pipefail
apt-get install -y --no-install-recommends prometheus-postgres-exporter wget
ln -s /usr/bin/prometheus-postgres-exporter /usr/bin/postgres_exporter   # /bin is /usr/bin (merged /usr)
[ -x /bin/postgres_exporter ]
# Debian's defaults (a DATA_SOURCE_NAME for its own service user) are not part of the contract.
rm -f /etc/default/prometheus-postgres-exporter /etc/init.d/prometheus-postgres-exporter
id nobody
/bin/postgres_exporter --version
