"""Contract: every deployment variant is a project the real Compose v2 accepts, and its merged
output validates against the Compose Specification's JSON Schema (as vendored by check-jsonschema)."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest
import yaml

from cslr import compose, config
from cslr.gpu import Gpu, GpuState

pytestmark = pytest.mark.contract

NO_GPU = GpuState("off")
ONE_GPU = GpuState("auto", (Gpu(0, "NVIDIA L4", "23034 MiB"),))


@pytest.fixture(scope="module")
def compose_spec():
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    return json.loads(text)


VARIANTS = {
    "cpu-only": ("{}\n", NO_GPU, False),
    "gpu": ("{}\n", ONE_GPU, False),
    "all-optional-off": ("services:\n  redis: {enabled: false}\n  mlflow: {enabled: false}\n  marimo: {enabled: false}\n", NO_GPU, False),
    "test-cluster": ("{}\n", NO_GPU, True),
    "gpu-test-cluster-ft": ("ray:\n  gcs_fault_tolerance: true\n", ONE_GPU, True),
}


def active(doc, plan):
    """Services `up` starts: no profile, or one of the active profiles (COMPOSE_PROFILES)."""
    on = set(plan.active_profiles)
    return {n for n, s in doc["services"].items() if not s.get("profiles") or on & set(s["profiles"])}


def render(project, text, gpu, test_cluster, tmp_path):
    cfg = config.load(project(text), environ={})
    plan = compose.plan(cfg, gpu, test_cluster=test_cluster)
    _, merged = compose.render(plan, tmp_path / "_build")
    return plan, yaml.safe_load(merged)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_is_valid_compose(name, project, tmp_path, compose_spec):
    text, gpu, test_cluster = VARIANTS[name]
    plan, doc = render(project, text, gpu, test_cluster, tmp_path)
    jsonschema.validate(doc, compose_spec)
    expected = {"health", "ray-cpu"}
    if "redis: {enabled: false}" not in text:
        expected |= {"redis", "postgres", "mlflow", "marimo"}
    if gpu.node_enabled:
        expected.add("ray-gpu")
    assert active(doc, plan) == expected
    # Switched-off services stay defined (inactive) so `depends_on: {required: false}` holds.
    assert {"redis", "postgres", "mlflow", "marimo"} <= set(doc["services"])
    assert ("test-cluster" in doc["services"]) is test_cluster
    assert not list((tmp_path / "_build").iterdir()), "render must not leave files behind"


def test_published_ports_bind_to_loopback_by_default(project, tmp_path):
    _, doc = render(project, "{}\n", ONE_GPU, True, tmp_path)
    published = [(name, p) for name, svc in doc["services"].items() for p in svc.get("ports", [])]
    assert published, "the stack publishes ports"
    assert {p["host_ip"] for _, p in published} == {"127.0.0.1"}
    assert {int(p["published"]) for _, p in published} == {8888, 10001, 8260, 6379, 8265, 6380, 8266, 6381, 5000, 8080, 9090, 3000}


def test_health_publishes_its_dashboard_proxy_on_bind_address(project, tmp_path):
    _, doc = render(project, "network: {bind_address: 10.9.8.7}\nservices:\n  health: {dashboard_port: 18260}\n", ONE_GPU, False, tmp_path)
    health = doc["services"]["health"]
    dash = [p for p in health["ports"] if p["target"] == 8265]
    assert [(p["host_ip"], p["published"]) for p in dash] == [("10.9.8.7", "18260")]
    env = health["environment"]
    assert (env["RAY_DASHBOARD_PROXY_PORT"], env["RAY_DASHBOARD_PORT"], env["RAY_DASHBOARD_PORTS"]) == ("8265", "8265", "")


def test_static_addresses_and_data_volumes(project, tmp_path):
    _, doc = render(project, "{}\n", ONE_GPU, False, tmp_path)
    addr = {name: svc["networks"]["ray-network"]["ipv4_address"] for name, svc in doc["services"].items()}
    assert addr == {
        "health": "172.28.0.2",
        "ray-cpu": "172.28.0.10",
        "ray-gpu": "172.28.0.11",
        "redis": "172.28.0.20",
        "mlflow": "172.28.0.30",
        "postgres": "172.28.0.31",
        "marimo": "172.28.0.40",
        "prometheus": "172.28.0.60",
        "grafana": "172.28.0.61",
        "redis-exporter": "172.28.0.62",
        "postgres-exporter": "172.28.0.63",
    }
    assert doc["networks"]["ray-network"]["ipam"]["config"] == [{"subnet": "172.28.0.0/16"}]
    assert {"mlflow-data", "postgres-data", "redis-data", "ray-temp"} <= set(doc["volumes"])
    # Notebooks live in a host folder beside config.yaml (services.marimo.notebooks), not a volume.
    notebooks = [v for v in doc["services"]["marimo"]["volumes"] if v["target"] == "/notebooks"]
    assert notebooks == [{"type": "bind", "source": str(tmp_path / "notebooks"), "target": "/notebooks", "bind": {"create_host_path": True}}]
    assert "marimo-notebooks" not in doc["volumes"]


# Long-running services without a healthcheck, and why: the official oliver006/redis_exporter
# image is FROM scratch - no shell, no HTTP client to probe with (Prometheus's `up` tells instead).
NO_CLIENT_TO_PROBE_WITH = {"redis-exporter"}


def test_every_long_running_service_has_a_healthcheck_and_scripts_are_read_only(project, tmp_path):
    _, doc = render(project, "{}\n", ONE_GPU, True, tmp_path)
    for name, svc in doc["services"].items():
        if name not in ("test-cluster", *NO_CLIENT_TO_PROBE_WITH):
            assert svc.get("healthcheck", {}).get("test"), f"{name} lacks a healthcheck"
            assert svc.get("restart") == "unless-stopped"
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind" and vol["target"] != "/notebooks":  # the notebooks folder is the one writable bind
                assert vol.get("read_only") is True, f"{name} mounts {vol['source']} writable"


def test_nodes_and_notebook_get_ray_and_mlflow_addresses(project, tmp_path):
    _, doc = render(project, "{}\n", ONE_GPU, True, tmp_path)
    for name in ("ray-cpu", "ray-gpu", "marimo", "test-cluster"):
        env = doc["services"][name]["environment"]
        assert env["RAY_ADDRESS"] and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["REDIS_URL"].startswith("redis://")
        assert env["RAY_AUTH_TOKEN"] == "ray-secret" and env["RAY_AUTH_MODE"] == "token"
    assert doc["services"]["marimo"]["environment"]["RAY_ADDRESS"] == "ray://health:10001"  # the proxy follows the head
    health = doc["services"]["health"]
    assert health["environment"]["RAY_CLIENT_PROXY_PORT"] == "10001"
    assert [(p["published"], p["target"]) for p in health["ports"]] == [("8888", 8080), ("10001", 10001), ("8260", 8265)]
    gpu_env = doc["services"]["ray-gpu"]["environment"]
    assert (gpu_env["NODE_HOSTNAME"], gpu_env["NODE_IP"], gpu_env["RAY_NUM_GPUS"]) == ("ray-gpu", "172.28.0.11", "1")


def test_config_values_reach_the_files_through_interpolation(project, tmp_path):
    text = "network:\n  bind_address: 0.0.0.0\nservices:\n  mlflow: {port: 5500}\nray:\n  cpu: {memory: 4g, shm_size: 2g}\n"
    _, doc = render(project, text, NO_GPU, False, tmp_path)
    assert [p["published"] for p in doc["services"]["mlflow"]["ports"]] == ["5500"]
    assert {p["host_ip"] for p in doc["services"]["mlflow"]["ports"]} == {"0.0.0.0"}
    assert int(doc["services"]["ray-cpu"]["mem_limit"]) == 4 * 1024**3
    assert int(doc["services"]["ray-cpu"]["shm_size"]) == 2 * 1024**3


def test_hand_run_with_the_generated_env_file_matches(project, tmp_path):
    """`docker compose --env-file _build/.env -f compose/compose.yaml ... config` by hand gives the same project."""
    import subprocess

    cfg = config.load(project("{}\n"), environ={})
    plan = compose.plan(cfg, ONE_GPU)
    written = compose.generate(plan, tmp_path / "_build")
    cmd = plan.command(["config"], env_file=tmp_path / "_build" / ".env", binary=[compose.compose_binary()])
    # The generated overlays (telemetry.yaml) are in this test's build dir, not the repository's _build/.
    cmd = [str(tmp_path / a) if a.startswith("_build/") else a for a in cmd]
    by_hand = subprocess.run(cmd, cwd=config.ROOT, capture_output=True, text=True, env=compose.subprocess_env(), check=True).stdout
    generated = written[-1].read_text().split("\n", 1)[1]
    assert yaml.safe_load(by_hand) == yaml.safe_load(generated)


MULTIHOST = (__import__("pathlib").Path(__file__).parent / "multihost-config.yaml").read_text()


@pytest.mark.parametrize(
    "host,services",
    [
        ("host-a", {"health", "ray-cpu", "ray-gpu", "redis", "postgres", "mlflow", "marimo"}),
        ("host-b", {"health", "ray-cpu", "ray-gpu"}),
    ],
)
def test_multihost_projects_are_valid_compose(host, services, project, tmp_path, compose_spec):
    cfg = config.load(project(MULTIHOST), environ={})
    plan = compose.plan(cfg, NO_GPU, host=host)
    _, merged = compose.render(plan, tmp_path / "_build")
    doc = yaml.safe_load(merged)
    jsonschema.validate(doc, compose_spec)
    assert active(doc, plan) == services
    for kind in ("cpu", "gpu"):
        svc = doc["services"][f"ray-{kind}"]
        assert svc["network_mode"] == "host" and "networks" not in svc and "ports" not in svc
        assert svc["environment"]["NODE_HOSTNAME"] == svc["hostname"] == f"ray-{kind}-{host}"
        assert "ray-cpu-host-a=192.168.1.10" in svc["extra_hosts"] and "host-b=192.168.1.11" in svc["extra_hosts"]
        assert svc["environment"]["HEAD_WHITELIST"] == "ray-cpu-host-a:6379,ray-gpu-host-a:6380"
    gpu_env = doc["services"]["ray-gpu"]["environment"]
    assert (gpu_env["RAY_HEAD_PORT"], gpu_env["NODE_AGENT_PORT"], gpu_env["RAY_MIN_WORKER_PORT"]) == ("6380", "7380", "21100")
    assert not list((tmp_path / "_build").iterdir())


# What each service may do (docs/security.md, "Which user each container runs as"): the caps each
# root prelude needs, nothing for the rest.
CAP_ADD = {
    "ray-cpu": ["CHOWN", "DAC_OVERRIDE", "SETUID", "SETGID", "KILL"],
    "ray-gpu": ["CHOWN", "DAC_OVERRIDE", "SETUID", "SETGID", "KILL"],
    "redis": ["CHOWN", "DAC_READ_SEARCH", "SETUID", "SETGID"],
    "postgres": ["CHOWN", "DAC_READ_SEARCH", "FOWNER", "SETUID", "SETGID"],
    "mlflow": ["CHOWN", "SETUID", "SETGID", "KILL"],
}


def _hardening_holds(doc):
    for name, svc in doc["services"].items():
        assert svc.get("cap_drop") == ["ALL"], f"{name}: cap_drop {svc.get('cap_drop')}"
        assert sorted(svc.get("cap_add", [])) == sorted(CAP_ADD.get(name, [])), f"{name}: cap_add {svc.get('cap_add')}"
        assert "no-new-privileges:true" in svc.get("security_opt", []), f"{name}: {svc.get('security_opt')}"
        assert int(svc.get("mem_limit") or 0) > 0, f"{name} has no memory limit"
        logging = svc.get("logging") or {}
        assert logging.get("driver") == "json-file" and logging.get("options", {}).get("max-size") and logging["options"].get("max-file"), name
        assert not svc.get("privileged"), name


@pytest.mark.parametrize("name", VARIANTS)
def test_every_service_drops_capabilities_privileges_and_has_limits(name, project, tmp_path):
    text, gpu, test_cluster = VARIANTS[name]
    _, doc = render(project, text, gpu, test_cluster, tmp_path)
    _hardening_holds(doc)
    assert {"health", "ray-cpu", "redis", "postgres", "mlflow", "marimo"} <= set(doc["services"])


@pytest.mark.parametrize("host", ["host-a", "host-b"])
def test_multihost_services_keep_the_hardening(host, project, tmp_path):
    cfg = config.load(project(MULTIHOST), environ={})
    _, merged = compose.render(compose.plan(cfg, NO_GPU, host=host), tmp_path / "_build")
    _hardening_holds(yaml.safe_load(merged))


def test_the_ray_nodes_drop_for_good_and_mlflow_is_not_root(project, tmp_path):
    _, doc = render(project, "{}\n", ONE_GPU, False, tmp_path)
    for node in ("ray-cpu", "ray-gpu"):
        script = doc["services"][node]["command"][-1]
        # The drop itself sets no_new_privs: a task cannot sudo back to root even where the
        # engine ignored security_opt.
        assert "exec setpriv --reuid=" in script and "--no-new-privs" in script.split("exec setpriv", 1)[1], script
    mlflow = doc["services"]["mlflow"]
    uid, _, gid = mlflow["environment"]["MLFLOW_RUN_AS"].partition(":")
    assert int(uid) != 0 and int(gid) != 0
    assert "os.setuid(u)" in mlflow["command"][2] and mlflow["command"][4:6] == ["mlflow", "server"]


def test_service_memory_limits_are_settings(project, tmp_path):
    text = "services:\n  health: {memory: 300m}\n  redis: {memory: 700m}\n  postgres: {memory: 600m}\n  mlflow: {memory: 3g}\n  marimo: {memory: 5g}\n"
    _, doc = render(project, text, NO_GPU, False, tmp_path)
    limits = {name: int(doc["services"][name]["mem_limit"]) for name in ("health", "redis", "postgres", "mlflow", "marimo")}
    assert limits == {"health": 300 * 1024**2, "redis": 700 * 1024**2, "postgres": 600 * 1024**2, "mlflow": 3 * 1024**3, "marimo": 5 * 1024**3}
