"""Image sources, content-hashed tags and the order of making images present (cslr/images.py).

The engine is a recorded stand-in here (`present`/`pull` answers); the real builds on local
bases run in the e2e tier."""

from __future__ import annotations

import subprocess

import pytest

from cslr import config, images, wheelhouse
from cslr.errors import ConfigError
from cslr.gpu import GpuState
from cslr.project import load_validated

NO_GPU = GpuState  # detect(mode) on a machine without nvidia-smi: no GPUs


def load(project, text="{}\n"):
    return config.load(project(text), environ={})


def test_base_refs_for_each_source(project):
    cfg = load(project)
    assert images.base_refs(cfg, "pull") == {
        "RAY_BASE_IMAGE": "rayproject/ray:2.60.0-py311-cpu",
        "RAY_GPU_BASE_IMAGE": "rayproject/ray:2.60.0-py311-gpu",
        "MLFLOW_BASE_IMAGE": "ghcr.io/mlflow/mlflow:v3.17.2",
        "POSTGRES_IMAGE": "postgres:15",
        "REDIS_IMAGE": "redis:7.4",
        "PROMETHEUS_IMAGE": "prom/prometheus:v2.53.4",
        "REDIS_EXPORTER_IMAGE": "oliver006/redis_exporter:v1.67.0",
        "POSTGRES_EXPORTER_IMAGE": "quay.io/prometheuscommunity/postgres-exporter:v0.16.0",
    }
    assert images.base_refs(cfg, "local") == {
        "RAY_BASE_IMAGE": "cslr-local/ray:2.60.0",
        "RAY_GPU_BASE_IMAGE": "cslr-local/ray:2.60.0",
        "MLFLOW_BASE_IMAGE": "cslr-local/mlflow:3.17.2",
        "POSTGRES_IMAGE": "cslr-local/postgres:15",
        "REDIS_IMAGE": "cslr-local/redis:7",
        "PROMETHEUS_IMAGE": "cslr-local/prometheus:2",
        "REDIS_EXPORTER_IMAGE": "cslr-local/redis-exporter:1",
        "POSTGRES_EXPORTER_IMAGE": "cslr-local/postgres-exporter:0.11",
    }


def test_tags_are_content_hashed_and_stable(project, tmp_path):
    cfg = load(project)
    first, again = images.image_env(cfg, "pull"), images.image_env(cfg, "pull")
    assert first == again
    assert first["RAY_IMAGE"].startswith("cslr/ray:2.60.0-") and len(first["RAY_IMAGE"].rsplit("-", 1)[1]) == 12
    assert first["PIP_NO_INDEX"] == "0" and images.image_env(cfg, "local")["PIP_NO_INDEX"] == "1"
    # Another base means another tag; the notebook follows the Ray image's tag.
    local = images.image_env(cfg, "local")
    assert local["RAY_IMAGE"] != first["RAY_IMAGE"] and local["MARIMO_IMAGE"] != first["MARIMO_IMAGE"]
    assert local["MLFLOW_IMAGE"] != first["MLFLOW_IMAGE"]


def test_experiment_requirements_change_the_ray_tag_only(project, tmp_path):
    root = tmp_path / "root"
    for rel in ("compose/ray", "compose/mlflow", "compose/marimo"):
        (root / rel).mkdir(parents=True)
        for f in ("Dockerfile", "requirements.txt"):
            (root / rel / f).write_text(f"{rel} {f}\nmarimo==0.25.2\n")
    (root / images.NO_REQUIREMENTS).write_text("")
    reqs = root / "exp.txt"
    reqs.write_text("numpy==2.0.0\n")
    cfg = config.load(project("{}\n"), environ={})
    cfg.data["images"]["requirements"] = str(reqs)
    before = images.image_env(cfg, "pull", root)
    reqs.write_text("numpy==2.1.0\n")
    after = images.image_env(cfg, "pull", root)
    assert before["RAY_IMAGE"] != after["RAY_IMAGE"] and before["MARIMO_IMAGE"] != after["MARIMO_IMAGE"]
    assert before["MLFLOW_IMAGE"] == after["MLFLOW_IMAGE"]
    assert after["EXPERIMENT_REQUIREMENTS"] == "exp.txt"


@pytest.mark.parametrize(
    "requested,official,local,pull,expected",
    [
        ("pull", False, False, "unreachable", "pull"),
        ("local", True, False, None, "local"),
        ("auto", True, False, "unreachable", "pull"),
        ("auto", False, True, None, "local"),
        ("auto", False, False, None, "pull"),
        ("auto", False, False, "dial tcp: no such host", "local"),
    ],
)
def test_choose_source(requested, official, local, pull, expected):
    probe = (lambda: None) if pull is None else (lambda: pull)
    source, why = images.choose_source(requested, official, local, probe)
    assert source == expected
    if requested == "auto" and not official and not local and pull:
        assert "cannot be reached (dial tcp: no such host)" in why


def test_auto_without_a_probe_does_not_pull(project):
    assert images.choose_source("auto", False, False, None)[0] == "pull"


class FakeDocker(images.Docker):
    """Stands in for the engine: a set of present images, pulls that work or not."""

    def __init__(self, present=(), pull_ok=True):
        self.images, self.pull_ok, self.calls = set(present), pull_ok, []

    def present(self, ref):
        return ref in self.images

    def pull(self, ref, quiet=False):
        self.calls.append(("pull", ref))
        if self.pull_ok:
            self.images.add(ref)
        return subprocess.CompletedProcess([], 0 if self.pull_ok else 1, "", "" if self.pull_ok else "no such host")


def test_ensure_pulls_missing_bases_then_builds_ray_before_marimo(project):
    env = images.image_env(load(project), "pull")
    docker = FakeDocker()
    built = []

    def build(services):
        built.append(services)
        image = {"ray-cpu": "RAY_IMAGE", "mlflow": "MLFLOW_IMAGE", "marimo": "MARIMO_IMAGE"}[services[0]]
        docker.images.add(env[image])

    done = images.ensure(
        env,
        ["health", "ray-cpu", "mlflow", "postgres", "marimo"],
        build,
        lambda s: None,
        docker,
        lambda *a: pytest.fail("no local build"),
        lambda: pytest.fail("no wheelhouse"),
    )
    assert [c[1] for c in docker.calls] == ["rayproject/ray:2.60.0-py311-cpu", "ghcr.io/mlflow/mlflow:v3.17.2", "postgres:15"]
    assert built == [["ray-cpu"], ["mlflow"], ["marimo"]]
    assert done[-1] == f"built {env['MARIMO_IMAGE']}"
    # Everything present: nothing is pulled or built again.
    assert images.ensure(env, ["health", "ray-cpu", "mlflow", "postgres", "marimo"], build, lambda s: None, docker, None, None) == []


def test_ensure_local_builds_bases_and_uses_the_wheelhouse(project):
    env = images.image_env(load(project), "local")
    docker = FakeDocker()
    calls = []

    def local(names, _env):
        calls.append(("bases", tuple(names)))
        docker.images.update(env[b] for b in images.BASE_KEYS)

    def build(services):
        docker.images.add(env["RAY_IMAGE"])

    images.ensure(env, ["health", "ray-cpu", "redis"], build, lambda s: None, docker, local, lambda: calls.append(("wheelhouse",)))
    assert ("bases", ("ray", "redis")) in calls and ("wheelhouse",) in calls
    assert docker.calls == []  # never pulls with the local source


def test_ensure_failed_pull_names_the_local_source(project):
    env = images.image_env(load(project), "pull")
    with pytest.raises(images.ImageError, match="images.source: local"):
        images.ensure(env, ["redis"], lambda s: None, lambda s: None, FakeDocker(pull_ok=False), None, None)


def test_local_bases_need_root(monkeypatch):
    monkeypatch.setattr(images, "is_root", lambda: False)
    with pytest.raises(images.ImageError, match="sudo make bases"):
        images.run_local_bases_script(["ray"], {}, {}, run=lambda *a, **k: pytest.fail("must not run"))
    with pytest.raises(images.ImageError) as err:
        images.run_local_bases_script(["mlflow"], {}, {"MLFLOW_VERSION": "3.9.0", "RAY_VERSION": "2.60.0"}, run=lambda *a, **k: pytest.fail("must not run"))
    assert "sudo MLFLOW_VERSION=3.9.0 RAY_VERSION=2.60.0 bash tools/build-local-bases.sh mlflow" in str(err.value)


def test_requirements_must_exist_inside_the_project(project, tmp_path, monkeypatch):
    monkeypatch.setattr(images, "ROOT", tmp_path)
    cfg = project("images:\n  requirements: missing.txt\n")
    with pytest.raises(ConfigError) as err:
        load_validated(cfg, detect=NO_GPU)
    assert "$.images.requirements: found 'missing.txt', expected an existing pip requirements file" in str(err.value)
    assert "config.yaml:2:" in str(err.value)


def test_postgres_major_other_than_the_local_base_is_a_warning(project):
    loaded = load_validated(project("images:\n  postgres: postgres:16\n"), detect=NO_GPU)
    assert any("$.images.postgres" in str(w) and "warning" in str(w) for w in loaded.warnings)
    assert not any("$.images.postgres" in str(w) for w in load_validated(project("images:\n  source: pull\n  postgres: postgres:16\n"), detect=NO_GPU).warnings)


def test_gpu_on_without_a_gpu_warns_with_the_reason(project):
    loaded = load_validated(project("gpu: on\n"), detect=lambda mode: GpuState(mode, (), "nvidia-smi not found"))
    assert any(str(w).startswith("config.yaml:1:6: $.gpu: warning: on, but no GPU was detected (nvidia-smi not found)") for w in loaded.warnings)


def test_wheelhouse_download_targets_the_images_python(project):
    ray, mlflow = wheelhouse.download_commands(load(project), wheelhouse.DEFAULT_DIR, arch="x86_64")
    for cmd in (ray, mlflow):
        assert cmd[cmd.index("--python-version") + 1] == "3.11" and "--only-binary=:all:" in cmd
        assert "manylinux2014_x86_64" in cmd and "manylinux_2_35_x86_64" in cmd
    # Two environments, two resolutions: the MLflow server's version need not match the Ray
    # image's MLflow client (compose/ray/requirements.txt pins mlflow-skinny).
    assert "ray[default]==2.60.0" in ray and "mlflow==3.17.2" not in ray and any(a.endswith("compose/ray/requirements.txt") for a in ray)
    assert "mlflow==3.17.2" in mlflow and "ray[default]==2.60.0" not in mlflow and any(a.endswith("compose/mlflow/requirements.txt") for a in mlflow)
    older = wheelhouse.download_commands(load(project, "images:\n  mlflow_base: ghcr.io/mlflow/mlflow:v3.9.0\n"), wheelhouse.DEFAULT_DIR, arch="x86_64")
    assert "mlflow==3.9.0" in older[1] and not any("mlflow==" in a for a in older[0])
    assert wheelhouse.machine_arch("arm64") == "aarch64"


def test_wheelhouse_stays_complete_for_an_earlier_config(project, tmp_path):
    """Switching images.mlflow_base to an older MLflow and back downloads nothing the second time."""
    calls = []
    run = lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0)  # noqa: E731
    now, older = load(project), load(project, "images:\n  mlflow_base: ghcr.io/mlflow/mlflow:v3.9.0\n")
    wheelhouse.ensure(now, tmp_path, run=run, out=lambda _: None)
    wheelhouse.ensure(older, tmp_path, run=run, out=lambda _: None)
    assert len(calls) == 4  # two groups each
    assert wheelhouse.is_complete(now, tmp_path) and wheelhouse.is_complete(older, tmp_path)
    assert "is complete" in wheelhouse.ensure(now, tmp_path, run=run, out=lambda _: None) and len(calls) == 4
    failing = lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1)  # noqa: E731
    with pytest.raises(wheelhouse.WheelhouseError):
        wheelhouse.ensure(load(project, "ray:\n  version: 2.59.0\n"), tmp_path, run=failing, out=lambda _: None)


def test_present_refs_in_one_call_and_none_without_an_engine():
    calls = []

    def engine(found, err=""):
        def run(cmd, **kw):
            calls.append(cmd)
            refs = cmd[5:] if cmd[2] == "inspect" and cmd[3] == "--format" else cmd[3:]
            hits = [r for r in refs if r in found]
            return subprocess.CompletedProcess(
                cmd,
                0 if len(hits) == len(refs) else 1,
                "".join("sha\n" for _ in hits),
                err or "".join(f"Error: No such image: {r}\n" for r in refs if r not in found),
            )

        return run

    assert images.Docker(engine({"a", "b"})).present_refs(["a", "b"]) == {"a", "b"} and len(calls) == 1
    assert images.Docker(engine({"a"})).present_refs(["a", "b"]) == {"a"}
    down = engine(set(), err="Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?")
    assert images.Docker(down).present_refs(["a"]) is None


def test_resolve_source_without_an_engine_stays_pull(project):
    def no_engine(cmd, **kw):
        raise FileNotFoundError("docker")

    assert images.resolve_source(load(project), images.Docker(no_engine), ["ray-cpu"], probe_pull=True)[0] == "pull"
