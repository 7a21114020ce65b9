#!/bin/bash
# Runs inside the chroot of the local rayproject/ray base (tools/build-local-bases.sh).
# Reproduces the documented contract of rayproject/ray (docs/images.md) and nothing more:
# user ray (uid 1000, gid 100 `users`, passwordless sudo), home /home/ray, Python 3.11 in
# /home/ray/anaconda3/bin (first on PATH via the image config), ray[default] at the pinned
# version from the wheelhouse mounted at /wheels. No MLflow, redis-py or Marimo.
set -euxo pipefail
. /tmp/image/versions.env
apt-get install -y --no-install-recommends \
  python3 python3-venv sudo procps iproute2 curl ca-certificates
useradd -m -s /bin/bash -d /home/ray -u 1000 -g 100 ray
usermod -aG sudo ray
echo 'ray ALL=NOPASSWD: ALL' >> /etc/sudoers
# The official image's interpreter is a conda Python 3.11 at /home/ray/anaconda3; here a venv
# at the same path stands for it (same interpreter version, same bin/ layout).
python3 -m venv /home/ray/anaconda3
/home/ray/anaconda3/bin/python -m pip install --no-index --no-cache-dir --find-links /wheels \
  "ray[default]==${RAY_VERSION}"
/home/ray/anaconda3/bin/python -m pip check
chown -R 1000:100 /home/ray
/home/ray/anaconda3/bin/python -c 'import ray; print("ray", ray.__version__)'
