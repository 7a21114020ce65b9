"""The generated-project handle (cslr/stack.py); the real engine is exercised by the e2e tier."""

from __future__ import annotations

import subprocess

import pytest

from cslr import config, stack


def test_down_volumes_needs_yes(project, tmp_path):
    calls = []
    st = stack.Stack(config.load(project("{}\n"), environ={}), tmp_path, run=lambda *a, **k: calls.append(a))
    with pytest.raises(stack.StackError, match="--yes"):
        st.down(volumes=True)
    assert calls == []  # refused before anything ran


def test_down_volumes_removes_the_declared_volumes_compose_left(project, tmp_path):
    """A disabled service's volume (created by `inv up` like every declared one) goes too; a
    volume the project does not declare stays."""
    build = tmp_path / "_build"
    build.mkdir()
    (build / "compose.yaml").write_text("services:\n  redis: {profiles: [redis]}\nvolumes:\n  redis-data: {}\n  postgres-data: {}\n")
    (build / ".env").write_text("COMPOSE_PROFILES=\n")
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        out = "cslr_redis-data\ncslr_other\n" if cmd[:3] == ["docker", "volume", "ls"] else ""
        return subprocess.CompletedProcess(cmd, 0, out, "")

    stack.Stack(config.load(project("{}\n"), environ={}), build, run=run).down(volumes=True, yes=True)
    assert "--volumes" in calls[0] and calls[-1] == ["docker", "volume", "rm", "cslr_redis-data"]
    calls.clear()
    stack.Stack(config.load(project("{}\n"), environ={}), build, run=run).down()
    assert len(calls) == 1  # without --volumes nothing but `compose down`


def test_stack_command_targets_the_generated_project(project, tmp_path):
    st = stack.Stack(config.load(project("{}\n"), environ={}), tmp_path / "_build")
    cmd = st.command(["ps"])
    assert cmd[1:] == ["--env-file", str(tmp_path / "_build" / ".env"), "-f", str(tmp_path / "_build" / "compose.yaml"), "ps"]


def test_expected_services_follow_the_active_profiles(project, tmp_path):
    build = tmp_path / "_build"
    build.mkdir()
    (build / "compose.yaml").write_text("services:\n  health: {}\n  redis: {profiles: [redis]}\n  marimo: {profiles: [marimo]}\n")
    (build / ".env").write_text("COMPOSE_PROFILES=redis\n")
    st = stack.Stack(config.load(project("{}\n"), environ={}), build)
    assert st.expected_services() == ["health", "redis"]
