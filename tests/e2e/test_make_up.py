"""`make up` on a machine that already has Docker, as a non-root `docker`-group user in a fresh
clone: it calls no system package manager, starts no daemon, changes nothing outside the clone
(the user's own Compose plugin included), and brings the default stack up.

"A machine that already has Docker" is this one after `make engine`; the user's own Compose
plugin is a copy of a Compose v2 binary placed where Docker CE puts it for a user."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import E2E_USER, RUNUSER, clean_env, clone_for_user, compose_cmd, user_env

pytestmark = pytest.mark.e2e

# Shims that stand for the system's package managers and service managers: any call is logged
# and fails, so a `make up` that tried to install or start anything would be seen.
WATCHED = ("apt-get", "apt", "dpkg", "systemctl", "service", "dockerd", "containerd", "sudo", "snap")


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    if root.exists():
        for path in sorted(root.rglob("*")):
            if path.is_symlink():
                out[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def machine_state(home: Path) -> dict:
    dockerd = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout.split()
    return {
        "dpkg": hashlib.sha256(Path("/var/lib/dpkg/status").read_bytes()).hexdigest(),
        "dockerd": sorted(dockerd),
        "home-docker": tree_digest(home / ".docker"),
        "system-plugins": {d: tree_digest(Path(d)) for d in ("/usr/local/lib/docker", "/usr/libexec/docker", "/usr/lib/docker")},
    }


def test_make_up_leaves_the_machine_alone_and_brings_the_stack_up(tmp_path):
    from cslr import compose

    home = Path(f"~{E2E_USER}").expanduser()
    clone = clone_for_user(Path(tempfile.gettempdir()), prefix="cslr-make-up-")
    shims = Path(tempfile.mkdtemp(prefix="cslr-shims-"))
    log = shims / "calls.log"
    log.touch()
    os.chmod(log, 0o666)
    for name in WATCHED:
        (shims / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexit 1\n')
        (shims / name).chmod(0o755)
    os.chmod(shims, 0o755)
    # The user's own Compose plugin, as Docker CE installs it for a user.
    plugin = home / ".docker" / "cli-plugins" / "docker-compose"
    plugin.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(compose.compose_binary(), plugin)
    subprocess.run(["chown", "-R", f"{E2E_USER}:", str(home / ".docker")], check=True)
    before = machine_state(home)
    env = user_env(path_prefix=f"{shims}:")
    try:
        up = subprocess.run([*RUNUSER, "make", "-C", str(clone), "up"], env=env, capture_output=True, text=True, timeout=1500)
        print(up.stdout[-4000:], up.stderr[-4000:])
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert log.read_text() == "", f"make up called system tools: {log.read_text()}"
        assert machine_state(home) == before
        rows = [line.split() for line in up.stdout.splitlines() if line.startswith(("health ", "ray-cpu ", "redis ", "mlflow ", "postgres ", "marimo "))]
        assert {r[0] for r in rows} == {"health", "ray-cpu", "redis", "mlflow", "postgres", "marimo"}, up.stdout
        assert all(r[1:3] == ["running", "healthy"] for r in rows), up.stdout
        assert (clone / ".venv").is_dir() and (clone / ".env").stat().st_mode & 0o777 == 0o600
    finally:
        build = clone / "_build"
        if (build / "compose.yaml").exists():
            subprocess.run(compose_cmd(build) + ["down", "--volumes", "--remove-orphans"], capture_output=True, env=clean_env(), timeout=300)
        shutil.rmtree(clone, ignore_errors=True)
        shutil.rmtree(shims, ignore_errors=True)
        shutil.rmtree(home / ".docker", ignore_errors=True)
