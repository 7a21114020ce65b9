"""Telemetry off by default, everywhere (issue 22, item 1): the one model (cslr/topology.py
TELEMETRY), the generated overlay, the Kubernetes export and the Ray node's own `ray start`.
The real Compose binary's view is tests/contract/test_telemetry_contract.py; running containers,
tests/e2e/test_stack.py."""

from __future__ import annotations

import yaml

from cslr import compose, config, k8s, topology
from cslr.gpu import GpuState
from cslr.project import load_validated
from tests._scripts import CONTROL_SECRET, load_script

OFF = topology.telemetry_env(False)
KUBE = """
gpu: on
ray:
  gcs_fault_tolerance: true
kubernetes:
  registry: registry.lab.example:5000/lab
  autoscaling: {enabled: true}
  gpu_workers: {replicas: 1, min_replicas: 0, max_replicas: 2, gpus_per_worker: 1}
"""


def test_every_variable_has_an_opt_out_value_and_ray_only_takes_0_or_1():
    assert [name for name, off, _ in topology.TELEMETRY] == list(OFF)
    assert OFF["DO_NOT_TRACK"] == OFF["MLFLOW_DISABLE_TELEMETRY"] == "true"  # MLflow compares DO_NOT_TRACK to "true" exactly
    assert {OFF["RAY_USAGE_STATS_ENABLED"], topology.telemetry_env(True)["RAY_USAGE_STATS_ENABLED"]} == {"0", "1"}


def test_the_generated_overlay_names_every_service_of_the_model(project):
    cfg = config.load(project("{}\n"), environ={})
    plan = compose.plan(cfg, GpuState("off"), test_cluster=True)
    assert plan.files[-1] == compose.BUILD_DIR / compose.TELEMETRY_OVERLAY
    doc = yaml.safe_load(plan.generated[compose.TELEMETRY_OVERLAY])
    assert list(doc["services"]) == [s.name for s in topology.SERVICES if not s.gpu_node] + ["test-cluster"]
    assert all(svc == {"environment": OFF} for svc in doc["services"].values())


def _containers(files):
    for name, objects in files.items():
        for obj in objects:
            spec = obj.get("spec") or {}
            if obj["kind"] == "RayCluster":
                yield f"{name}: autoscaler", spec["autoscalerOptions"]
                pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
            elif obj["kind"] in ("Deployment", "StatefulSet"):
                pods = [spec["template"]]
            else:
                continue
            for pod in pods:
                for container in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", []):
                    yield f"{name}: {container['name']}", container


def test_every_kubernetes_container_carries_the_same_variables(project):
    for enabled in (False, True):
        cfg = load_validated(project(KUBE + f"telemetry: {{enabled: {str(enabled).lower()}}}\n"), environ={}, detect=lambda mode: k8s.GpuState(mode)).cfg
        files, _, _ = k8s.manifests(cfg)
        seen = list(_containers(files))
        assert {"raycluster.yaml: autoscaler", "mlflow.yaml: mlflow", "marimo.yaml: marimo", "postgres.yaml: postgres", "redis.yaml: redis"} <= {
            n for n, _ in seen
        }
        assert sum(1 for n, _ in seen if n.startswith("raycluster.yaml")) >= 4  # autoscaler, head, cpu and gpu workers
        for where, container in seen:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            want = topology.telemetry_env(enabled)
            assert {k: env.get(k) for k in OFF} == {k: want.get(k) for k in OFF}, (enabled, where)


def test_the_ray_node_disables_usage_stats_unless_told_1():
    rn = load_script("ray_node")
    base = {"NODE_HOSTNAME": "a", "NODE_IP": "10.0.0.2", "HEAD_WHITELIST": "a,b", "RAY_TEMP_DIR": "/tmp/r", "CSLR_CONTROL_SECRET": CONTROL_SECRET}
    decision = rn.Decision("head", "a:6379", "")
    for value, on in ((None, False), ("0", False), ("1", True)):
        cfg = rn.load_config({**base, **({"RAY_USAGE_STATS_ENABLED": value} if value else {})})
        assert ("--disable-usage-stats" in rn.build_ray_command(cfg, decision)) is not on
        assert rn.ray_child_env(cfg, {}, "head")["RAY_USAGE_STATS_ENABLED"] == ("1" if on else "0")
