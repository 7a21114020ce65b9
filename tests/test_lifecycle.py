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


# ---------------------------------------------------------------- watch_up: containers of this `up`


class Watched:
    """Stands for a Stack whose `compose ps -a` answers from a script of polls, and for the
    engine's `docker inspect` (FinishedAt per container id, which a poll may change); the
    `compose up -d` process itself is `true` (it ends at once with 0, as a finished up does)."""

    def __init__(self, polls, finished, healthchecked=("mlflow",)):
        self.polls, self.finished, self.lines = list(polls), finished, []
        self.healthchecked = set(healthchecked)

    def expected_services(self):
        return ["mlflow"]

    def healthchecked_services(self):
        return self.healthchecked

    def command(self, args):
        return ["true"]

    def services(self):
        rows, changes = self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
        self.finished.update(changes)
        return rows

    def out(self, line):
        self.lines.append(line)

    def logs_tail(self, service):
        return ""

    def run(self, argv, **kw):
        if argv[:2] == ["docker", "inspect"] and argv[3] == "{{.State.FinishedAt}}":
            return subprocess.CompletedProcess(argv, 0, self.finished.get(argv[-1], "") + "\n", "")
        if argv[:2] == ["docker", "inspect"]:
            return subprocess.CompletedProcess(argv, 0, '{"Status": "exited", "ExitCode": 137, "OOMKilled": true}', "")
        raise AssertionError(argv)


OLD_EXITED = {"ID": "old", "Name": "p-mlflow-1", "Service": "mlflow", "State": "exited"}
NEW = {"ID": "new", "Name": "0a1b_p-mlflow-1", "Service": "mlflow", "State": "created"}
HEALTHY = {"ID": "new", "Name": "p-mlflow-1", "Service": "mlflow", "State": "running", "Health": "healthy"}


def test_a_container_stopped_before_up_is_not_a_failure_while_compose_replaces_it():
    # The CI failure of issue 17: after the MLflow migration, the old (stopped) mlflow container
    # stood next to its replacement in `compose ps -a`, and `inv up` called the service exited.
    watched = Watched(
        [([OLD_EXITED], {}), ([OLD_EXITED], {}), ([NEW, OLD_EXITED], {}), ([HEALTHY], {})],
        {"old": "2026-12-06T05:17:50Z"},
    )
    rows = lifecycle.watch_up(watched, timeout=60, sleep=lambda s: None)
    assert rows == [HEALTHY]
    assert watched.lines == ["  mlflow     created", "  mlflow     running (healthy)"]


def test_a_container_that_runs_again_and_exits_is_a_failure_with_how_it_ended():
    # The same container, started by this `up` (FinishedAt moves), exited again: a real failure.
    watched = Watched([([OLD_EXITED], {}), ([OLD_EXITED], {"old": "2026-12-06T05:18:40Z"})], {"old": "2026-12-06T05:17:50Z"})
    with pytest.raises(StackError) as err:
        lifecycle.watch_up(watched, timeout=60, sleep=lambda s: None)
    assert "mlflow is exited. Its last log lines:\n(none)" in str(err.value)
    assert "It ended with exit code 137, killed for memory" in str(err.value)


def test_a_container_this_up_created_that_exits_is_a_failure():
    watched = Watched([([], {}), ([{**NEW, "State": "exited"}], {})], {})  # nothing before `up`
    with pytest.raises(StackError, match="mlflow is exited"):
        lifecycle.watch_up(watched, timeout=60, clock=iter(range(10**6)).__next__, sleep=lambda s: None)


def test_this_up_and_failed_rows_are_pure_over_their_inputs():
    stale = {"old": "t1"}
    assert lifecycle.this_up([OLD_EXITED, NEW], stale, {"old": "t1"}.get) == [NEW]
    assert lifecycle.this_up([OLD_EXITED], stale, {"old": "t2"}.get) == [OLD_EXITED]
    assert lifecycle.this_up([{**OLD_EXITED, "State": "running"}], stale, {"old": "t1"}.get) == [{**OLD_EXITED, "State": "running"}]
    assert lifecycle.failed_rows([NEW, HEALTHY]) == []
    assert lifecycle.failed_rows([{**HEALTHY, "Health": "unhealthy"}, {**NEW, "State": "restarting"}, {**NEW, "State": "dead"}]) == [
        {**HEALTHY, "Health": "unhealthy"},
        {**NEW, "State": "restarting"},
        {**NEW, "State": "dead"},
    ]


def test_state_lines_say_how_a_container_ended():
    assert lifecycle.state_lines({"Status": "exited", "ExitCode": 1, "Error": ""}) == ["It ended with exit code 1"]
    assert lifecycle.state_lines({"Status": "exited", "ExitCode": 127, "Error": "exec: not found"}) == ["It ended with exit code 127: exec: not found"]
    assert lifecycle.state_lines({"Status": "running", "Health": {"Log": [{"ExitCode": 1, "Output": "no\n"}]}}) == ["Its last healthcheck (exit 1): no"]
    assert lifecycle.state_lines({}) == []
