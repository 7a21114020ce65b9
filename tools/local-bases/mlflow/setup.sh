#!/bin/bash
# Runs inside the chroot of the local ghcr.io/mlflow/mlflow base (tools/build-local-bases.sh).
# The official image is `FROM python:3.11-slim` + `pip install mlflow==$VERSION` (mlflow's
# docker/Dockerfile): MLflow and what it depends on, installed into the system Python, run as
# root. No psycopg2 (MLflow does not depend on it). Wheels come from the wheelhouse at /wheels.
set -euxo pipefail
. /tmp/image/versions.env
apt-get install -y --no-install-recommends python3 python3-pip python-is-python3 ca-certificates
python3 -m pip install --no-index --no-cache-dir --break-system-packages --root-user-action=ignore \
  --find-links /wheels "mlflow==${MLFLOW_VERSION}"
python3 -m pip check
! python3 -c 'import psycopg2' 2>/dev/null
command -v mlflow
