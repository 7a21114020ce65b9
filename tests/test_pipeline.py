"""The one pipeline (cslr/project.py): load -> validate -> generate -> Stack, what `down` needs,
the Stack reading its generated files once, and the `status` exit rule."""

from __future__ import annotations

import subprocess

import pytest

from cslr import project, report, stack
from cslr.gpu import GpuState

MERGED = "name: demo\nservices:\n  health:\n    image: x\n  redis:\n    image: r\n    profiles: [redis]\n"


class Recorder:
    """A fake `run`: records every argv, answers `compose config` with MERGED and the engine with nothing."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, argv, **kw):
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        out = MERGED if argv[-1] == "config" else ""
        return subprocess.CompletedProcess(argv, 0, out, "")


def _loaded(project_factory, text="images:\n  source: pull\n"):
    path = project_factory(text)
    return project.load_validated(path, environ={}, detect=lambda mode: GpuState("off", (), "test"))


def test_generate_writes_the_project_once_and_the_stack_reads_it(project_factory, tmp_path):
    run = Recorder()
    gen = project.generate(_loaded(project_factory), tmp_path / "_build", run=run)
    assert len([c for c in run.calls if c[-1] == "config"]) == 1  # one `docker compose config`
    assert gen.image_source == "pull" and (tmp_path / "_build" / "compose.yaml") in gen.written
    st = gen.stack(run=run)
    assert st.build_dir == tmp_path / "_build" and st.expected_services() == ["health", "redis"]  # redis: on by default


def test_existing_stack_without_a_project_says_which_command_makes_it(project_factory, tmp_path):
    with pytest.raises(project.NotGenerated) as caught:
        project.existing_stack(_loaded(project_factory), tmp_path / "nothing")
    assert caught.value.exit_code == 1 and "run `inv generate` or `inv up` first" in str(caught.value)


def test_down_uses_the_generated_project_without_generating(project_factory, tmp_path):
    build = tmp_path / "_build"
    build.mkdir()
    (build / "compose.yaml").write_text(MERGED)
    run = Recorder()
    st = project.stack_for_down(_loaded(project_factory), build, run=run)
    assert isinstance(st, stack.Stack) and run.calls == []


def test_down_without_a_project_and_nothing_in_the_engine_writes_nothing(project_factory, tmp_path):
    run = Recorder()
    assert project.stack_for_down(_loaded(project_factory), tmp_path / "_build", run=run) is None
    assert not (tmp_path / "_build").exists()
    assert all(c[0] == "docker" and "compose" not in c for c in run.calls)


def test_down_without_a_project_generates_one_when_the_engine_knows_the_project(project_factory, tmp_path):
    class Known(Recorder):
        def __call__(self, argv, **kw):
            proc = super().__call__(argv, **kw)
            if list(argv[:3]) == ["docker", "ps", "-aq"]:
                return subprocess.CompletedProcess(argv, 0, "abc\n", "")
            if list(argv[:3]) == ["docker", "container", "inspect"]:
                return subprocess.CompletedProcess(argv, 0, '[{"Name": "/x", "Config": {"Labels": {"com.docker.compose.project": "cslr"}}}]', "")
            return proc

    st = project.stack_for_down(_loaded(project_factory), tmp_path / "_build", run=Known())
    assert st is not None and (tmp_path / "_build" / "compose.yaml").exists()


def test_the_stack_reads_its_generated_files_once(project_factory, tmp_path):
    build = tmp_path / "_build"
    build.mkdir()
    (build / "compose.yaml").write_text(MERGED)
    (build / ".env").write_text("COMPOSE_PROFILES=redis\n")
    st = stack.Stack(_loaded(project_factory).cfg, build)
    first = (st.expected_services(), st.active_profiles(), st.healthchecked_services())
    (build / "compose.yaml").unlink()
    (build / ".env").unlink()
    assert (st.expected_services(), st.active_profiles(), st.healthchecked_services()) == first == (["health", "redis"], {"redis"}, set())
    st.env()["COMPOSE_PROFILES"] = "changed"  # a caller's copy
    assert st.active_profiles() == {"redis"}
    st.refresh()
    with pytest.raises(FileNotFoundError):
        st.doc()


@pytest.mark.parametrize(
    ("nodes", "head", "failure"),
    [([], None, "no live Ray head"), ([{"role": "worker"}], None, "no live Ray head"), ([{"role": "head"}], "ray-cpu", None)],
)
def test_the_status_exit_rule(nodes, head, failure):
    assert report.status_failure({"ray_nodes": nodes, "head": head}) == failure


@pytest.fixture
def project_factory(project):
    return project
