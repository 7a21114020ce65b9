"""cslr/lifecycle.py: the phases of `inv up` run in their documented order, every boundary (engine,
Compose, images, upgrades, folders, volumes) replaced by a recorder; a phase that fails stops
everything after it, and phase 1 failing changes nothing."""

from __future__ import annotations

import subprocess

import pytest

from cslr import config, identity, lifecycle, preflight, stack, upgrade
from cslr.stack import StackError

MERGED = "services:\n  health:\n    image: x\n  marimo:\n    image: m\n    profiles: [marimo]\n"

# Every step of bring_up, in the documented order, with the phase it belongs to.
ORDER = [
    ("preflight", "docker_available"),
    ("preflight", "compose_available"),
    ("preflight", "claim_for_up"),
    ("preflight", "firewall_check"),
    ("preflight", "check_preflight"),
    ("images", "base_ray_findings"),
    ("images", "ensure_images"),
    ("versions", "ray_image_findings"),
    ("versions", "postgres_findings"),
    ("versions", "mlflow_schema"),
    ("start", "host_folders"),
    ("start", "create_volumes"),
    ("start", "watch_up"),
]


@pytest.fixture
def recorded(project, tmp_path, monkeypatch):
    """(stack, calls, fail_at): a Stack on a generated project whose every boundary records."""
    build = tmp_path / "_build"
    build.mkdir()
    (build / "compose.yaml").write_text(MERGED)
    (build / ".env").write_text("COMPOSE_PROFILES=marimo\nCSLR_IMAGE_SOURCE=pull\n")

    def no_engine(argv, **kw):
        raise AssertionError(f"a boundary was not replaced: {argv}")

    st = stack.Stack(config.load(project("{}\n"), environ={}), build, run=no_engine, out=lambda line: None)
    calls: list[str] = []
    fail_at: set[str] = set()

    def step(name, result):
        def fake(*args, **kw):
            calls.append(name)
            if name in fail_at:
                return (["it failed"], []) if name == "firewall_check" else ["it failed"]
            return result

        return fake

    monkeypatch.setattr(preflight, "docker_available", step("docker_available", []))
    monkeypatch.setattr(preflight, "compose_available", step("compose_available", []))
    monkeypatch.setattr(lifecycle, "claim_for_up", step("claim_for_up", []))
    monkeypatch.setattr(preflight, "firewall_check", step("firewall_check", ([], [])))
    monkeypatch.setattr(lifecycle, "check_preflight", step("check_preflight", []))
    monkeypatch.setattr(lifecycle, "base_ray_findings", step("base_ray_findings", []))
    monkeypatch.setattr(lifecycle, "ensure_images", step("ensure_images", []))
    monkeypatch.setattr(lifecycle, "ray_image_findings", step("ray_image_findings", []))
    monkeypatch.setattr(upgrade, "postgres_findings", step("postgres_findings", []))
    monkeypatch.setattr(upgrade, "mlflow_schema", step("mlflow_schema", []))
    monkeypatch.setattr(lifecycle, "host_folders", step("host_folders", []))
    monkeypatch.setattr(identity, "create_volumes", step("create_volumes", []))
    monkeypatch.setattr(lifecycle, "watch_up", step("watch_up", [{"Service": "health", "State": "running"}]))
    monkeypatch.setattr(lifecycle.compose, "compose_binary", lambda: "docker-compose")
    return st, calls, fail_at


def test_the_phases_are_the_documented_four_in_order():
    assert [name for name, _ in lifecycle.PHASES] == ["preflight", "images", "versions", "start"]
    doc = lifecycle.__doc__
    assert doc.index("1. preflight") < doc.index("2. images") < doc.index("3. Ray versions") < doc.index("4. start")


def test_bring_up_runs_every_step_in_phase_order(recorded):
    st, calls, _ = recorded
    rows = lifecycle.bring_up(st, lifecycle.UpOptions(claimed=True))
    assert calls == [name for _, name in ORDER]
    assert rows == [{"Service": "health", "State": "running"}]


@pytest.mark.parametrize(
    ("failing", "last"),
    [
        ("docker_available", "compose_available"),  # engine and Compose are reported together
        ("claim_for_up", "claim_for_up"),
        ("firewall_check", "check_preflight"),  # reported with the other preflight findings
        ("check_preflight", "check_preflight"),
        ("base_ray_findings", "base_ray_findings"),
        ("ray_image_findings", "ray_image_findings"),
        ("postgres_findings", "postgres_findings"),
    ],
)
def test_a_failing_step_stops_every_later_step(recorded, monkeypatch, failing, last):
    st, calls, fail_at = recorded
    fail_at.add(failing)
    if failing == "claim_for_up":  # the claim refuses by raising (exit 2)

        def refuse(*args, **kw):
            calls.append("claim_for_up")
            raise identity.IdentityError("not yours")

        monkeypatch.setattr(lifecycle, "claim_for_up", refuse)
    with pytest.raises((StackError, identity.IdentityError)):
        lifecycle.bring_up(st, lifecycle.UpOptions())
    names = [name for _, name in ORDER]
    assert calls == names[: names.index(last) + 1]


def test_phase_one_failing_changes_nothing(recorded, tmp_path):
    """Phase 1 reads only: the steps that change images, folders, volumes or containers never ran."""
    st, calls, fail_at = recorded
    fail_at.add("check_preflight")
    with pytest.raises(StackError):
        lifecycle.bring_up(st, lifecycle.UpOptions())
    changing = {"ensure_images", "mlflow_schema", "host_folders", "create_volumes", "watch_up"}
    assert not changing & set(calls)


def test_host_folders_are_created_in_the_start_phase_only(project, tmp_path, monkeypatch):
    """The real host_folders (the notebooks folder, the one-time copy of an older stack's
    notebooks) runs inside phase_start, not before."""
    build = tmp_path / "_build"
    build.mkdir()
    (build / "compose.yaml").write_text("services:\n  health:\n    image: x\n")
    (build / ".env").write_text("COMPOSE_PROFILES=\n")
    cfg = config.load(project("services:\n  marimo:\n    notebooks: ./nb\n"), environ={})
    st = stack.Stack(cfg, build, run=lambda *a, **k: subprocess.CompletedProcess(a, 0, "", ""), out=lambda line: None)
    folder = tmp_path / "nb"
    for name in ("phase_preflight", "phase_images", "phase_versions"):
        monkeypatch.setattr(lifecycle, name, lambda stack, options: None)
    monkeypatch.setattr(identity, "create_volumes", lambda *a, **k: [])
    monkeypatch.setattr(lifecycle, "watch_up", lambda stack, timeout: (folder.is_dir(), [])[1])
    seen = []
    real_start = lifecycle.phase_start
    monkeypatch.setattr(lifecycle, "phase_start", lambda stack, options: (seen.append(folder.is_dir()), real_start(stack, options))[1])
    monkeypatch.setattr(lifecycle.compose, "compose_binary", lambda: "docker-compose")
    lifecycle.bring_up(st, lifecycle.UpOptions())
    assert seen == [False] and folder.is_dir()
