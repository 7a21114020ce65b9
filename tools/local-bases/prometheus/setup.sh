#!/bin/bash
# Runs inside the image's chroot (see tools/build-local-bases.sh): Debian's Prometheus with the
# contract of the official prom/prometheus image (docs/images.md): /bin/prometheus and
# /bin/promtool, the config at /etc/prometheus/prometheus.yml, the data in /prometheus, both
# owned by nobody, who runs it; wget for healthchecks (the official image's busybox has it).
set -euxo pipefail
apt-get install -y --no-install-recommends prometheus wget
[ -x /bin/prometheus ] && [ -x /bin/promtool ]   # /bin is /usr/bin (merged /usr)
# The official image's config (documentation/examples/prometheus.yml): Prometheus scrapes itself.
install -d -m 0755 /etc/prometheus
cat >/etc/prometheus/prometheus.yml <<'YML'
global:
  scrape_interval: 15s
  evaluation_interval: 15s
scrape_configs:
  - job_name: "prometheus"
    static_configs:
      - targets: ["localhost:9090"]
YML
install -d -o nobody -g nogroup -m 0755 /prometheus
chown -R nobody:nogroup /etc/prometheus /prometheus
# Debian's service user and unit are not part of the contract: nothing starts it but the entrypoint.
rm -rf /var/lib/prometheus/metrics2
id nobody
prometheus --version
