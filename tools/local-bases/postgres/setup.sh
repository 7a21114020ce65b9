#!/bin/bash
# Runs inside the image's chroot (see tools/build-local-bases.sh).
set -euxo pipefail
# like the official image: no Debian "main" cluster
apt-get install -y --no-install-recommends postgresql-common
sed -ri 's/#(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf
apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15
# listen on all addresses by default (initdb copies the sample into PGDATA)
sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" /usr/share/postgresql/15/postgresql.conf.sample
grep -F "listen_addresses = '*'" /usr/share/postgresql/15/postgresql.conf.sample
install -m 0755 /tmp/image/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ln -sf docker-entrypoint.sh /usr/local/bin/docker-entrypoint
mkdir -p /docker-entrypoint-initdb.d /var/run/postgresql /var/lib/postgresql/data
chown -R postgres:postgres /var/run/postgresql /var/lib/postgresql
chmod 3777 /var/run/postgresql
chmod 1777 /var/lib/postgresql/data
/usr/lib/postgresql/15/bin/postgres --version
