"""The local bases keep the official images' documented contract, and nothing more; the
project's images add what docs/images.md says they add. Every fact asserted here is a row of the
table in docs/images.md, with the source it comes from there.

Runs on the real engine against the images `make bases` and `inv up` build (the e2e tier)."""

from __future__ import annotations

import subprocess

import pytest

pytestmark = pytest.mark.e2e

RAY, MLFLOW, POSTGRES, REDIS = "cslr-local/ray:2.60.0", "cslr-local/mlflow:3.17.2", "cslr-local/postgres:15", "cslr-local/redis:7"


def run(image: str, *cmd: str, user: str | None = None, entrypoint: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    args = ["docker", "run", "--rm", "--network", "none"]
    if user:
        args += ["--user", user]
    if entrypoint is not None:
        args += ["--entrypoint", entrypoint]
    for k, v in (env or {}).items():
        args += ["-e", f"{k}={v}"]
    return subprocess.run([*args, image, *cmd], capture_output=True, text=True, timeout=180)


def config(image: str, fmt: str) -> str:
    return subprocess.run(["docker", "image", "inspect", "--format", fmt, image], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module", autouse=True)
def bases_present():
    missing = [i for i in (RAY, MLFLOW, POSTGRES, REDIS) if subprocess.run(["docker", "image", "inspect", i], capture_output=True).returncode]
    if missing:
        pytest.fail(f"local bases missing: {missing}; run `make bases`")


def test_ray_base_user_home_and_python_like_rayproject_ray():
    out = run(
        RAY,
        "bash",
        "-c",
        'id -u; id -g; id -un; echo "$HOME"; pwd; command -v python3; python3 -c "import sys; print(sys.version_info[:2])"; sudo -n true && echo sudo-ok',
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:8] == ["1000", "100", "ray", "/home/ray", "/home/ray", "/home/ray/anaconda3/bin/python3", "(3, 11)", "sudo-ok"]
    assert config(RAY, "{{.Config.User}}") == "1000"
    assert any(e.startswith("PATH=/home/ray/anaconda3/bin:") for e in config(RAY, "{{range .Config.Env}}{{println .}}{{end}}").splitlines())


def test_ray_base_can_drop_to_any_user_and_run_ray_as_it():
    # compose/compose.yaml starts each Ray node as root, hands /tmp/ray to CSLR_UID:CSLR_GID and
    # drops to them with util-linux's setpriv (Essential in Ubuntu, the official image's base);
    # Ray then runs as a uid the image has no passwd entry for, with HOME and USER set.
    tools = run(RAY, "sh", "-c", "command -v setpriv && command -v stat && command -v chown", user="0:0")
    assert tools.returncode == 0 and len(tools.stdout.split()) == 3, tools.stdout + tools.stderr
    drop = run(
        RAY,
        "sh",
        "-c",
        'mkdir -p "$HOME" && chown 4321:4321 "$HOME" && exec setpriv --reuid=4321 --regid=4321 --clear-groups '
        'python3 -c "import os, getpass, ray; print(os.getuid(), os.getgid(), os.getgroups(), getpass.getuser(), ray.__version__)"',
        user="0:0",
        env={"HOME": "/tmp/cslr-home", "USER": "cslr"},
    )
    assert drop.returncode == 0 and drop.stdout.split() == ["4321", "4321", "[]", "cslr", "2.60.0"], drop.stdout + drop.stderr


def test_ray_base_carries_ray_default_and_not_the_platforms_clients():
    out = run(RAY, "python3", "-c", "import ray, ray.dashboard, aiohttp; print(ray.__version__)")
    assert out.returncode == 0 and out.stdout.strip() == "2.60.0", out.stderr
    for module in ("mlflow", "redis", "marimo", "psycopg2"):
        probe = run(RAY, "python3", "-c", f"import {module}")
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, module


def test_mlflow_base_is_mlflow_only_as_root():
    out = run(MLFLOW, "sh", "-c", "id -u; mlflow --version; python3 -c 'import sys; print(sys.version_info[:2])'")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "0" and "3.17.2" in lines[1] and lines[2] == "(3, 11)"
    probe = run(MLFLOW, "python3", "-c", "import psycopg2")
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr


def test_postgres_base_entrypoint_refuses_an_uninitialised_database_without_a_password():
    # The official entrypoint: no POSTGRES_PASSWORD (and no trust) on an empty PGDATA is an error.
    out = run(POSTGRES)
    assert out.returncode != 0 and "superuser password" in (out.stdout + out.stderr)
    assert config(POSTGRES, "{{json .Config.Entrypoint}}") == '["/usr/local/bin/docker-entrypoint.sh"]'
    assert config(POSTGRES, "{{.Config.StopSignal}}") == "SIGINT"
    assert "PGDATA=/var/lib/postgresql/data" in config(POSTGRES, "{{range .Config.Env}}{{println .}}{{end}}")


def test_postgres_base_initialises_with_the_official_variables():
    script = (
        "docker-entrypoint.sh postgres >/tmp/log 2>&1 & "
        "for i in $(seq 60); do pg_isready -q -h 127.0.0.1 -U u -d d && break; sleep 1; done; "
        "PGPASSWORD=pw psql -h 127.0.0.1 -U u -d d -tAc 'select current_user, current_database()'"
    )
    out = run(POSTGRES, "-c", script, entrypoint="bash", env={"POSTGRES_USER": "u", "POSTGRES_PASSWORD": "pw", "POSTGRES_DB": "d"})
    assert out.returncode == 0 and out.stdout.strip() == "u|d", out.stdout + out.stderr


def test_redis_base_runs_redis_server_in_data():
    assert config(REDIS, "{{json .Config.Cmd}}") == '["redis-server"]'
    assert config(REDIS, "{{.Config.WorkingDir}}") == "/data"
    out = run(REDIS, "redis-server", "--version")
    assert out.returncode == 0 and "v=7." in out.stdout


def project_image(var: str, inv) -> str:
    env = dict(line.split("=", 1) for line in (inv.workdir / "_build" / ".env").read_text().splitlines() if "=" in line and not line.startswith("#"))
    return env[var]


def test_project_ray_image_adds_the_clients_on_the_same_ray(inv):
    image = project_image("RAY_IMAGE", inv)
    out = run(image, "python3", "-c", "import ray, mlflow, redis; print(ray.__version__, mlflow.__version__)")
    assert out.returncode == 0 and out.stdout.split() == ["2.60.0", "3.17.2"], out.stderr
    assert config(image, "{{.Config.User}}") == "1000"  # the base's user, unchanged


def test_project_mlflow_image_adds_psycopg2(inv):
    out = run(project_image("MLFLOW_IMAGE", inv), "python3", "-c", "import mlflow, psycopg2; print('ok')")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_notebook_image_has_the_clusters_ray_and_marimo(inv):
    out = run(project_image("MARIMO_IMAGE", inv), "python3", "-c", "import ray, marimo, mlflow; print(ray.__version__, marimo.__version__)")
    assert out.returncode == 0 and out.stdout.split() == ["2.60.0", "0.25.2"], out.stderr
