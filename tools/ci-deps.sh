#!/usr/bin/env bash
# System packages the test tiers need beyond the Python venv; idempotent, run as root by CI.
#   redis-server: tests/integration/test_ray_node_ray.py (Ray GCS fault tolerance needs a real Redis)
#   iproute2, util-linux: ip / unshare / runuser (integration tests isolate nodes; the e2e tier
#                         runs the stack as a non-root docker-group user)
#   python3-venv: that user's own `make venv` with Debian's python3.11
#   chromium, chromium-driver: the Ray dashboard, MLflow and Marimo in headless Chromium, driven
#                     through Selenium (tests/e2e/test_research.py)
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ -x /usr/bin/python3.11 ] && /usr/bin/python3.11 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3.11 python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "ci-deps: need root to install: ${need[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "ci-deps: ok (redis-server $(redis-server --version | awk '{print $3}'))"
