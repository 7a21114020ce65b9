"""Contract: with the real Compose v2 `config`, every service of every deployment variant carries
the telemetry opt-out of cslr/topology.py (MLflow, DO_NOT_TRACK, Ray, marimo) while
`telemetry.enabled` is false (the default), and none of it once a lab switches it on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cslr import compose, config, topology
from cslr.gpu import Gpu, GpuState

pytestmark = pytest.mark.contract

NO_GPU = GpuState("off")
ONE_GPU = GpuState("auto", (Gpu(0, "NVIDIA L4", "23034 MiB"),))
MULTIHOST = (Path(__file__).parent / "multihost-config.yaml").read_text()
OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MARIMO_SKIP_UPDATE_CHECK": "1",
    "GF_ANALYTICS_REPORTING_ENABLED": "false",
    "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
    "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false",
    "GF_ANALYTICS_FEEDBACK_LINKS_ENABLED": "false",
    "GF_NEWS_NEWS_FEED_ENABLED": "false",
}
# A user's own overlay (`extra_overlays`) that adds a service, with Compose's own YAML tags.
USER_OVERLAY = "services:\n  tensorboard:\n    image: busybox\n    command: !override [sleep, infinity]\n    environment:\n      X: y\n"

VARIANTS = {
    "cpu-only": ("{}\n", NO_GPU, False, None),
    "gpu-test-cluster": ("{}\n", ONE_GPU, True, None),
    "optional-off": ("services:\n  redis: {enabled: false}\n  mlflow: {enabled: false}\n  marimo: {enabled: false}\n", NO_GPU, False, None),
    "user-overlay": ("extra_overlays: [user.yaml]\n", NO_GPU, True, None),
    "multihost-a": (MULTIHOST, NO_GPU, True, "host-a"),
    "multihost-b": (MULTIHOST, NO_GPU, False, "host-b"),
}


def merged(project, tmp_path, text, gpu, test_cluster, host, environ=None):
    (tmp_path / "user.yaml").write_text(USER_OVERLAY)
    cfg = config.load(project(text), environ=environ or {})
    plan = compose.plan(cfg, gpu, test_cluster=test_cluster, host=host)
    _, out = compose.render(plan, tmp_path / "_build")
    return yaml.safe_load(out)["services"]


def test_the_opt_out_is_the_models():
    assert topology.telemetry_env(False) == OFF
    assert topology.telemetry_env(True) == {"RAY_USAGE_STATS_ENABLED": "1"}


@pytest.mark.parametrize("name", VARIANTS)
def test_every_service_opts_out_by_default(name, project, tmp_path):
    text, gpu, test_cluster, host = VARIANTS[name]
    services = merged(project, tmp_path, text, gpu, test_cluster, host)
    assert {"health", "ray-cpu", "mlflow", "marimo", "postgres", "redis"} <= set(services)
    if name == "user-overlay":
        assert services["tensorboard"]["environment"]["X"] == "y"
    for svc_name, svc in services.items():
        env = svc.get("environment") or {}
        assert {k: env.get(k) for k in OFF} == OFF, svc_name


@pytest.mark.parametrize("how", ["config.yaml", "environment"])
@pytest.mark.parametrize("name", ["gpu-test-cluster", "user-overlay", "multihost-a"])
def test_a_lab_that_switches_telemetry_on_gets_no_opt_out(name, how, project, tmp_path):
    text, gpu, test_cluster, host = VARIANTS[name]
    if how == "config.yaml":
        text = ("" if text.strip() == "{}" else text) + "telemetry: {enabled: true}\n"
    services = merged(project, tmp_path, text, gpu, test_cluster, host, environ={"CSLR_TELEMETRY": "true"} if how == "environment" else None)
    for svc_name, svc in services.items():
        env = svc.get("environment") or {}
        assert not {"MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "MARIMO_SKIP_UPDATE_CHECK"} & set(env), svc_name
        assert env.get("RAY_USAGE_STATS_ENABLED") == "1", svc_name


def test_no_compose_file_sets_a_telemetry_variable_itself():
    """The model is the one place: a literal in a compose file would win over the switch (or lose)."""
    root = Path(__file__).resolve().parents[2]
    for path in [root / "compose" / "compose.yaml", *sorted((root / "overlays").glob("*.yaml*"))]:
        text = path.read_text()
        assert not [name for name in OFF if name in text], path
