"""The generated-project handle (cslr/stack.py); the real engine is exercised by the e2e tier."""

from __future__ import annotations

import pytest

from cslr import config, stack


def test_down_volumes_needs_yes(project, tmp_path):
    calls = []
    st = stack.Stack(config.load(project("{}\n"), environ={}), tmp_path, run=lambda *a, **k: calls.append(a))
    with pytest.raises(stack.StackError, match="--yes"):
        st.down(volumes=True)
    assert calls == []  # refused before anything ran


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
