#!/bin/bash
# Runs inside the image's chroot (see tools/build-test-images.sh).
# /wheels holds the wheels of requirements.lock, fetched on the host.
set -euxo pipefail
apt-get install -y --no-install-recommends \
  python3 python3-pip python-is-python3 python3-venv \
  procps iproute2 curl ca-certificates
# Offline install from the host-downloaded wheels, into /usr/local (system python3).
python3 -m pip install --no-index --no-cache-dir --break-system-packages \
  --root-user-action=ignore --find-links /wheels -r /tmp/image/requirements.lock
python3 -m pip check
python3 -c 'import ray, mlflow, marimo, psycopg, psycopg2, redis, requests; print("ray", ray.__version__, "mlflow", mlflow.__version__, "marimo", marimo.__version__)'
command -v ray mlflow marimo
