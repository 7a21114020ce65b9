"""`inv export k8s`: the manifests, checked offline.

- Every core object (Namespace, Secret, PersistentVolumeClaim, Deployment, Service) and every
  Ray pod template against the Kubernetes 1.37 OpenAPI schemas shipped by `kubernetes-validate`
  (strict: an unknown field is an error).
- The RayCluster against tests/fixtures/kuberay/raycluster-v1.schema.json, written from KubeRay's
  v1 API types; that schema is itself checked against three of KubeRay's own sample manifests.
- Golden files for three configs (tests/golden/k8s/*). Regenerate them with
  `CSLR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_k8s.py -k golden` and review the diff;
  the run that rewrites them skips (and fails under CI=true), it never passes silently.

No Kubernetes cluster is used: nothing here proves that KubeRay or a cluster accepts the objects.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from kubernetes_validate import utils as kv

from cslr import config, images, k8s, topology
from cslr.errors import ConfigError
from cslr.project import load_validated
from tests.conftest import ROOT, SECRETS

K8S_VERSION = "1.37.0"
FIXTURES = ROOT / "tests" / "fixtures" / "kuberay"
RAYCLUSTER_SCHEMA = json.loads((FIXTURES / "raycluster-v1.schema.json").read_text())
GOLDEN = ROOT / "tests" / "golden" / "k8s"
REGISTRY = "registry.lab.example:5000/lab"

CASES = {
    "cpu-only": f"""
        gpu: off
        ray:
          cpu: {{cpus: 4, memory: 8g, shm_size: 2.5g}}
        kubernetes:
          registry: {REGISTRY}
          cpu_workers: {{replicas: 2}}
    """,
    "gpu": f"""
        gpu: on
        ray:
          cpu: {{cpus: 4}}
          gpu: {{cpus: 8, memory: 32g, shm_size: 10g, object_store_memory: 8g}}
        kubernetes:
          registry: {REGISTRY}
          namespace: lab-gpu
          gpu_workers: {{replicas: 1, gpus_per_worker: 2}}
    """,
    "gcs-ft-autoscaling": f"""
        gpu: off
        ray:
          gcs_fault_tolerance: true
        services:
          marimo: {{enabled: false}}
        kubernetes:
          registry: {REGISTRY}
          storage_class: fast-ssd
          volumes: {{postgres: 50Gi}}
          autoscaling: {{enabled: true, idle_timeout_seconds: 300}}
          cpu_workers: {{replicas: 1, min_replicas: 1, max_replicas: 8}}
          gpu_workers: {{replicas: 0, min_replicas: 0, max_replicas: 2}}
    """,
    # Paths that exist on every Linux machine: validation checks the host folders.
    "data-workspace-custom": f"""
        gpu: off
        data: {{corpus: /usr/share, Raw_Images.v2: /usr}}
        workspace: /tmp
        services:
          monitoring: {{enabled: true}}
          custom:
            my_service:
              image: my-org/my-service:latest
              port: 9000
              command: [serve, --port, "9000"]
              environment: {{API_KEY: "${{MY_API_KEY}}", URL: "http://x/?k=${{MY_API_KEY}}&p=$$(not-expanded)", MODE: fast}}
              healthcheck: {{http: /health}}
              memory: 1g
            batch_worker:
              image: registry.lab.example:5000/tools/worker:2
              healthcheck: {{command: [worker, --check]}}
              volumes: [{{source: /tmp, target: /scratch, read_only: false}}]
        kubernetes:
          registry: {REGISTRY}
    """,
}
ENV = {**SECRETS, "MY_API_KEY": "custom-api-secret"}


def loaded(project, text):
    return load_validated(project(text, ENV), environ={}, detect=lambda mode: k8s.GpuState(mode))


def export(project, tmp_path, text):
    cfg = loaded(project, text).cfg
    out = tmp_path / "out"
    return cfg, out, k8s.export(cfg, out)


def objects(out: Path) -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(out.glob("*.yaml"))}


def _normalise_tags(text: str) -> str:
    """The project's image tags hash compose/ray etc.; golden files hold the shape, a test below the exact tags."""
    return re.sub(r"(cslr/(?:ray|ray-gpu|mlflow|marimo)):[0-9A-Za-z.]+-[0-9a-f]{12}\b", r"\1:VERSION-HASH", text)


# ------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(project, tmp_path, case):
    _cfg, out, written = export(project, tmp_path, CASES[case])
    want_dir = GOLDEN / case
    got = {p.name: _normalise_tags(p.read_text()) for p in written}
    if os.environ.get("CSLR_UPDATE_GOLDEN") == "1":
        want_dir.mkdir(parents=True, exist_ok=True)
        for old in want_dir.iterdir():
            old.unlink()
        for name, text in got.items():
            (want_dir / name).write_text(text)
        pytest.skip(f"CSLR_UPDATE_GOLDEN=1: rewrote {want_dir.relative_to(ROOT)}; review `git diff` and run again without it")
    assert want_dir.is_dir(), f"no golden files for {case}: run with CSLR_UPDATE_GOLDEN=1 once and review them"
    want = {p.name: p.read_text() for p in sorted(want_dir.iterdir())}
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], f"{case}/{name} differs from the golden file"


def test_export_is_deterministic(project, tmp_path):
    cfg = loaded(project, CASES["gcs-ft-autoscaling"]).cfg
    first = {p.name: p.read_bytes() for p in k8s.export(cfg, tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in k8s.export(cfg, tmp_path / "b")}
    assert first == second


# ------------------------------------------------------------------------- offline validation


def _ray_pod_templates(rc: dict) -> list[dict]:
    spec = rc["spec"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]


@pytest.mark.parametrize("case", sorted(CASES))
def test_core_objects_validate_against_the_kubernetes_openapi_schemas(project, tmp_path, case):
    _cfg, out, _ = export(project, tmp_path, CASES[case])
    checked = 0
    for name, docs in objects(out).items():
        if name == "kustomization.yaml":
            continue
        for doc in docs:
            if doc["kind"] == "RayCluster":
                for template in _ray_pod_templates(doc):
                    pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "ray"}, "template": template}
                    assert kv.validate(pod, K8S_VERSION, strict=True) == "1.37"
                    checked += 1
                continue
            assert kv.validate(doc, K8S_VERSION, strict=True) == "1.37", (name, doc["kind"])
            checked += 1
    assert checked >= 10


def test_the_openapi_check_refuses_an_unknown_field(project, tmp_path):
    """The check above could fail: a misspelt field in a Deployment is refused (strict)."""
    _cfg, out, _ = export(project, tmp_path, CASES["cpu-only"])
    deployment = next(d for d in objects(out)["redis.yaml"] if d["kind"] == "Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["replica"] = 1
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_raycluster_validates_against_the_kuberay_v1_schema(project, tmp_path, case):
    _cfg, out, _ = export(project, tmp_path, CASES[case])
    (rc,) = objects(out)["raycluster.yaml"]
    jsonschema.Draft202012Validator(RAYCLUSTER_SCHEMA).validate(rc)


@pytest.mark.parametrize("sample", sorted(p.name for p in FIXTURES.glob("*.yaml")))
def test_the_raycluster_schema_accepts_kuberays_own_samples(sample):
    docs = [d for d in yaml.safe_load_all((FIXTURES / sample).read_text()) if d and d.get("kind") == "RayCluster"]
    assert len(docs) == 1
    jsonschema.Draft202012Validator(RAYCLUSTER_SCHEMA).validate(docs[0])


def test_the_raycluster_schema_refuses_invented_fields_and_wrong_types():
    sample = next(d for d in yaml.safe_load_all((FIXTURES / "ray-cluster.sample.yaml").read_text()) if d)
    validator = jsonschema.Draft202012Validator(RAYCLUSTER_SCHEMA)
    for path, value in (
        (("spec", "gcsFaultTolerance"), {}),
        (("spec", "workerGroupSpecs", 0, "minReplicas"), "1"),
        (("spec", "headGroupSpec", "rayStartParams", "num-cpus"), 0),
        (("spec", "autoscalerOptions"), {"upscalingMode": "Fast"}),
    ):
        bad = copy.deepcopy(sample)
        node = bad
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        assert not validator.is_valid(bad), path
    bad = copy.deepcopy(sample)
    del bad["spec"]["headGroupSpec"]
    assert not validator.is_valid(bad)
    for options in ({"mode": "tokens"}, {"mode": "token", "secret": "x"}, {"secretName": 1}):
        bad = copy.deepcopy(sample)
        bad["spec"]["authOptions"] = options
        assert not validator.is_valid(bad), options


def test_the_raycluster_schema_has_kuberay_1_6_auth_options():
    """KubeRay 1.6.0's AuthOptions (mode, secretName, enableK8sTokenAuth) on a vendored sample."""
    sample = next(d for d in yaml.safe_load_all((FIXTURES / "ray-cluster.sample.yaml").read_text()) if d)
    sample["spec"]["authOptions"] = {"mode": "token", "secretName": "ray-cluster-token", "enableK8sTokenAuth": False}
    sample["spec"]["upgradeStrategy"] = {"type": "Recreate"}
    jsonschema.Draft202012Validator(RAYCLUSTER_SCHEMA).validate(sample)


# ------------------------------------------------------------------------- what the objects say


def test_raycluster_carries_the_configs_ray_version_images_resources_and_ports(project, tmp_path):
    cfg, out, _ = export(project, tmp_path, CASES["gpu"])
    (rc,) = objects(out)["raycluster.yaml"]
    tags = images.image_env(cfg, "pull")
    spec = rc["spec"]
    assert spec["rayVersion"] == cfg.get("ray", "version") == "2.60.0"
    head = spec["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == f"{REGISTRY}/{tags['RAY_IMAGE']}"
    assert {p["containerPort"] for p in head["containers"][0]["ports"]} == {6379, 8265, 10001}
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert sorted(groups) == ["cpu", "gpu"]
    gpu = groups["gpu"]["template"]["spec"]
    container = gpu["containers"][0]
    assert container["image"] == f"{REGISTRY}/{tags['RAY_GPU_IMAGE']}"
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    assert groups["gpu"]["rayStartParams"] == {"num-cpus": "8", "object-store-memory": str(8 * 1024**3)}
    assert gpu["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "10Gi"}}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert (out / "images.txt").read_text().splitlines()[1:] == [
        f"{tags[v]} {REGISTRY}/{tags[v]}" for v in ("RAY_IMAGE", "RAY_GPU_IMAGE", "MLFLOW_IMAGE", "MARIMO_IMAGE")
    ]


def test_no_gpu_group_without_gpu_workers(project, tmp_path):
    _cfg, out, _ = export(project, tmp_path, CASES["cpu-only"])
    (rc,) = objects(out)["raycluster.yaml"]
    assert [g["groupName"] for g in rc["spec"]["workerGroupSpecs"]] == ["cpu"]
    assert rc["spec"]["workerGroupSpecs"][0]["minReplicas"] == rc["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 2
    # GCS fault tolerance is off by default (the gcs-ft-autoscaling case turns it on).
    assert "gcsFaultToleranceOptions" not in rc["spec"] and rc["spec"]["enableInTreeAutoscaling"] is False
    assert "RAY_GPU_IMAGE" not in (out / "images.txt").read_text() and "ray-gpu" not in (out / "images.txt").read_text()


def test_token_auth_and_gcs_ft_come_from_the_secret(project, tmp_path):
    cfg, out, _ = export(project, tmp_path, CASES["gcs-ft-autoscaling"].replace("storage_class:", "native_auth: false\n          storage_class:"))
    (rc,) = objects(out)["raycluster.yaml"]
    spec = rc["spec"]
    assert "authOptions" not in spec  # native_auth false: the environment path (KubeRay < 1.6.0)
    ref = {"secretKeyRef": {"name": "cslr-secrets", "key": "REDIS_PASSWORD"}}
    assert spec["gcsFaultToleranceOptions"] == {"redisAddress": "redis:6379", "redisPassword": {"valueFrom": ref}, "externalStorageNamespace": "cslr"}
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] == 300
    groups = {g["groupName"]: (g["replicas"], g["minReplicas"], g["maxReplicas"]) for g in spec["workerGroupSpecs"]}
    assert groups == {"cpu": (1, 1, 8), "gpu": (0, 0, 2)}
    for template in _ray_pod_templates(rc):
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "cslr-secrets", "key": "RAY_AUTH_TOKEN"}}
    assert "marimo.yaml" not in objects(out)
    pvcs = [d for docs in objects(out).values() for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert {p["metadata"]["name"]: (p["spec"]["storageClassName"], p["spec"]["resources"]["requests"]["storage"]) for p in pvcs} == {
        "postgres-data": ("fast-ssd", "50Gi"),
        "mlflow-data": ("fast-ssd", "20Gi"),
        "redis-data": ("fast-ssd", "1Gi"),
    }


def test_native_token_auth_is_kuberays_auth_options_with_the_exports_secret(project, tmp_path):
    cfg, out, _ = export(project, tmp_path, CASES["gcs-ft-autoscaling"])
    (rc,) = objects(out)["raycluster.yaml"]
    assert rc["spec"]["authOptions"] == {"mode": "token", "secretName": "cslr-secrets"}
    for template in _ray_pod_templates(rc):
        names = {e["name"] for e in template["spec"]["containers"][0]["env"]}
        assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}  # KubeRay sets them from the Secret
    assert not {e["name"] for e in rc["spec"]["autoscalerOptions"]["env"]} & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    (secret,) = objects(out)["secret.yaml"]
    assert base64.b64decode(secret["data"]["auth_token"]).decode() == SECRETS["RAY_AUTH_TOKEN"]
    (rc_disabled,) = objects(export(project, tmp_path / "d", "ray: {auth: disabled}\nkubernetes: {registry: r.example}\n")[1])["raycluster.yaml"]
    assert "authOptions" not in rc_disabled["spec"]


def test_native_auth_with_a_ray_older_than_2_52_is_refused_at_export(project, tmp_path):
    cfg = loaded(project, f"ray: {{version: 2.51.1}}\nkubernetes: {{registry: {REGISTRY}}}\n").cfg
    with pytest.raises(ConfigError) as err:
        k8s.export(cfg, tmp_path / "out")
    assert "$.ray.version" in str(err.value) and "needs Ray 2.52.0 or newer" in str(err.value)
    cfg = loaded(project, f"ray: {{version: 2.51.1}}\nkubernetes: {{registry: {REGISTRY}, native_auth: false}}\n").cfg
    assert k8s.export(cfg, tmp_path / "ok")


def test_data_sets_and_the_workspace_are_claims_mounted_in_every_ray_pod_and_the_notebook(project, tmp_path):
    _cfg, out, _ = export(project, tmp_path, CASES["data-workspace-custom"])
    claims = {d["metadata"]["name"]: d["spec"]["accessModes"] for d in objects(out)["storage.yaml"]}
    assert claims == {"data-corpus": ["ReadOnlyMany"], "data-raw-images-v2": ["ReadOnlyMany"], "workspace": ["ReadWriteMany"]}
    want = {("data-corpus", "/data/corpus", True), ("data-raw-images-v2", "/data/Raw_Images.v2", True), ("workspace", "/workspace", False)}
    (rc,) = objects(out)["raycluster.yaml"]
    marimo = next(d for d in objects(out)["marimo.yaml"] if d["kind"] == "Deployment")["spec"]["template"]
    for template in [*_ray_pod_templates(rc), marimo]:
        spec = template["spec"]
        mounts = {(m["name"], m["mountPath"], bool(m.get("readOnly"))) for m in spec["containers"][0]["volumeMounts"]}
        assert want <= mounts
        volumes = {v["name"]: v.get("persistentVolumeClaim") for v in spec["volumes"]}
        assert volumes["data-corpus"] == {"claimName": "data-corpus", "readOnly": True} and volumes["workspace"] == {"claimName": "workspace"}
    kust = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert "storage.yaml" in kust["resources"] and "custom-services.yaml" in kust["resources"]


def test_custom_services_are_a_deployment_and_a_service_with_secrets_from_the_secret(project, tmp_path):
    cfg, out, written = export(project, tmp_path, CASES["data-workspace-custom"])
    docs = objects(out)["custom-services.yaml"]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [("Deployment", "batch-worker"), ("Deployment", "my-service"), ("Service", "my-service")]
    mine = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "my-service")["spec"]["template"]["spec"]["containers"][0]
    assert mine["image"] == "my-org/my-service:latest" and mine["args"] == ["serve", "--port", "9000"] and "command" not in mine
    assert mine["ports"] == [{"name": "main", "containerPort": 9000}]
    assert mine["readinessProbe"]["httpGet"] == {"path": "/health", "port": "main"}
    assert mine["resources"]["limits"]["memory"] == "1Gi" and mine["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in mine["env"]}
    ref = {"secretKeyRef": {"name": "cslr-secrets", "key": "MY_API_KEY"}}
    assert env["API_KEY"] == {"name": "API_KEY", "valueFrom": ref}
    assert env["CSLR_REF_MY_API_KEY"]["valueFrom"] == ref
    assert env["URL"]["value"] == "http://x/?k=$(CSLR_REF_MY_API_KEY)&p=$$(not-expanded)"
    assert [e["name"] for e in mine["env"]].index("CSLR_REF_MY_API_KEY") < [e["name"] for e in mine["env"]].index("URL")
    assert env["MODE"] == {"name": "MODE", "value": "fast"}
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["ports"] == [{"name": "main", "port": 9000, "targetPort": "main", "protocol": "TCP"}]
    worker = next(d for d in docs if d["metadata"]["name"] == "batch-worker")["spec"]["template"]["spec"]["containers"][0]
    assert worker["readinessProbe"]["exec"] == {"command": ["worker", "--check"]} and "ports" not in worker
    (secret,) = objects(out)["secret.yaml"]
    assert base64.b64decode(secret["data"]["MY_API_KEY"]).decode() == "custom-api-secret"
    text = (out / "custom-services.yaml").read_text()
    assert "custom-api-secret" not in text and "NOT EXPORTED: the host folders (volumes) of batch_worker" in text


def test_a_custom_service_named_like_an_exported_object_is_refused(project, tmp_path):
    cfg = loaded(project, f"services:\n  custom:\n    cslr-head-svc: {{image: 'x:1'}}\nkubernetes: {{registry: {REGISTRY}}}\n").cfg
    with pytest.raises(ConfigError) as err:
        k8s.export(cfg, tmp_path / "out")
    assert "$.services.custom.cslr-head-svc: found the name 'cslr-head-svc', which the export gives to KubeRay's" in str(err.value)


def test_readiness_probes_are_the_compose_healthchecks(project, tmp_path):
    _cfg, out, _ = export(project, tmp_path, CASES["cpu-only"])
    compose_services = yaml.safe_load((ROOT / "compose" / "compose.yaml").read_text())["services"]
    seen = 0
    for name in ("postgres", "redis", "mlflow", "marimo"):
        deployment = next(d for d in objects(out)[f"{name}.yaml"] if d["kind"] == "Deployment")
        probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        test = compose_services[name]["healthcheck"]["test"]
        want = ["sh", "-c", test[1].replace("$$", "$")] if test[0] == "CMD-SHELL" else test[1:]
        assert probe["exec"]["command"] == want
        assert probe["failureThreshold"] == compose_services[name]["healthcheck"]["retries"]
        seen += 1
    assert seen == 4


def test_marimo_pod_runs_as_the_images_user_not_the_exporting_host_user(project, tmp_path, monkeypatch):
    # On Docker the notebook runs as the user who ran `inv` (CSLR_UID); a pod has no host user to
    # match, so the export is the same whoever runs it: uid 1000, with fsGroup to write its claim.
    monkeypatch.setenv("CSLR_UID", "4321")
    monkeypatch.setenv("CSLR_GID", "8765")
    _cfg, out, _ = export(project, tmp_path, CASES["cpu-only"])
    spec = next(d for d in objects(out)["marimo.yaml"] if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    security = spec["containers"][0]["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (1000, 1000)
    assert spec["securityContext"] == {"fsGroup": 1000}
    assert "4321" not in (out / "marimo.yaml").read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_container_is_unprivileged_and_memory_limited(project, tmp_path, case):
    # As on Compose: no privilege escalation (no_new_privs: the Ray image's sudo is inert), every
    # capability dropped but what the compose file's cap_add grants a root prelude, a memory limit.
    cap_add = {name: svc.get("cap_add") for name, svc in k8s.compose_services().items()}
    _cfg, out, _ = export(project, tmp_path, CASES[case])
    containers = []
    for name, docs in objects(out).items():
        for doc in docs:
            spec = doc.get("spec", {})
            templates = [spec["template"]] if doc["kind"] == "Deployment" else []
            if doc["kind"] == "RayCluster":
                templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
            containers += [(name, c) for tpl in templates for c in tpl["spec"]["containers"]]
    assert len(containers) >= 5, [n for n, _ in containers]
    for name, container in containers:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        service = name.removesuffix(".yaml")
        assert security["capabilities"].get("add") == (cap_add.get(service) if service != "raycluster" else None), name
        assert container["resources"]["limits"]["memory"], name


def test_secret_holds_the_env_values_and_is_private(project, tmp_path):
    cfg, out, written = export(project, tmp_path, CASES["cpu-only"])
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    (secret,) = objects(out)["secret.yaml"]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"] and data["RAY_AUTH_TOKEN"] == SECRETS["RAY_AUTH_TOKEN"]
    assert data["MARIMO_TOKEN"] == SECRETS["MARIMO_TOKEN"] and data["REDIS_PASSWORD"] == SECRETS["REDIS_PASSWORD"]
    assert data["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:pg-secret@postgres:5432/")
    everything_else = "".join(p.read_text() for p in written if p.name != "secret.yaml")
    assert not any(value in everything_else for value in SECRETS.values())


def test_a_service_switched_off_leaves_no_stale_file(project, tmp_path):
    cfg = loaded(project, CASES["cpu-only"]).cfg
    k8s.export(cfg, tmp_path / "out")
    assert (tmp_path / "out" / "marimo.yaml").exists()
    k8s.export(loaded(project, CASES["gcs-ft-autoscaling"]).cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "marimo.yaml").exists()
    kust = yaml.safe_load((tmp_path / "out" / "kustomization.yaml").read_text())
    assert kust["resources"] == [p for p in k8s.FILES if (tmp_path / "out" / p).exists()]


# ------------------------------------------------------------------------- refused requests


@pytest.mark.parametrize(
    "text, where, message",
    [
        (
            "kubernetes: {registry: r.example, cpu_workers: {min_replicas: 5, max_replicas: 2}}\n",
            "$.kubernetes.cpu_workers.min_replicas (CSLR_K8S_CPU_WORKERS_MIN)",
            "found 5 > max_replicas 2, expected min_replicas ≤ max_replicas",
        ),
        (
            "kubernetes: {registry: r.example, autoscaling: {enabled: true}, cpu_workers: {replicas: 9, max_replicas: 4}}\n",
            "$.kubernetes.cpu_workers.replicas (CSLR_K8S_CPU_WORKERS)",
            "found 9 with autoscaling between min_replicas 0 and max_replicas 4",
        ),
        (
            "images: {ray_gpu: rayproject/ray:2.60.0-py311-cpu}\nkubernetes: {registry: r.example, gpu_workers: {replicas: 1}}\n",
            "$.images.ray_gpu (RAY_GPU_BASE_IMAGE)",
            "the same base as images.ray, while kubernetes.gpu_workers asks for GPU pods",
        ),
        ("kubernetes: {registry: 'Not A Registry'}\n", "$.kubernetes.registry (CSLR_K8S_REGISTRY)", "expected a value matching"),
        ("kubernetes: {volumes: {redis: 1G}}\n", "$.kubernetes.volumes.redis (CSLR_K8S_REDIS_VOLUME)", "expected a value matching"),
        ("kubernetes: {gpu_workers: {gpus_per_worker: 0}}\n", "$.kubernetes.gpu_workers.gpus_per_worker (CSLR_K8S_GPUS_PER_WORKER)", "found 0"),
        ("kubernetes: {nmespace: x}\n", "$.kubernetes.nmespace", "did you mean 'namespace'?"),
    ],
)
def test_bad_kubernetes_settings_are_refused_with_the_line(project, text, where, message):
    with pytest.raises(ConfigError) as err:
        loaded(project, text)
    assert err.value.exit_code == 2
    line = next(str(p) for p in err.value.problems if where in str(p))
    assert line.startswith("config.yaml:") and message in line, line


def test_export_without_a_registry_is_refused_and_writes_nothing(project, tmp_path):
    cfg = loaded(project, "{}\n").cfg
    with pytest.raises(ConfigError) as err:
        k8s.export(cfg, tmp_path / "out")
    assert err.value.exit_code == 2 and "$.kubernetes.registry (CSLR_K8S_REGISTRY): found null, expected the registry" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_the_kubernetes_defaults_leave_compose_users_valid(project):
    cfg = loaded(project, "{}\n").cfg
    assert cfg.get("kubernetes") == config.defaults()["kubernetes"]
    assert cfg.get("kubernetes", "gpu_workers", "replicas") == 0 and cfg.get("kubernetes", "registry") is None


@given(st.integers(min_value=1, max_value=2**50))
def test_quantity_keeps_the_byte_count(n):
    text = k8s.quantity(n)
    factor = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}.get(text[-2:], 1)
    assert int(text[:-2] if factor > 1 else text) * factor == n


# ------------------------------------------------------------------------- the task, as a user runs it


def test_inv_export_k8s_prints_paths_only_and_exits_2_when_refused(project, tmp_path):
    project(CASES["cpu-only"])
    env = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith(("RAY_", "CSLR_", "HEAD_"))}
    inv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
    ok = subprocess.run(
        [*inv, "export", "k8s", "--out", str(tmp_path / "k"), "-c", "config.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert "secret.yaml (mode 0600)" in ok.stdout and "kubectl apply -k" in ok.stdout
    assert not any(v in ok.stdout + ok.stderr for v in SECRETS.values())
    bad = subprocess.run(
        [*inv, "export", "k8s", "--out", str(tmp_path / "k2")],
        cwd=tmp_path,
        env={**env, "CSLR_K8S_CPU_WORKERS_MIN": "9"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "environment $CSLR_K8S_CPU_WORKERS_MIN: $.kubernetes.cpu_workers.min_replicas" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "k2").exists()
    other = subprocess.run([*inv, "export", "helm"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "unknown export target 'helm'; expected one of: k8s" in other.stderr


@given(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,60}", fullmatch=True))
def test_every_project_name_is_a_kubernetes_name_or_refused(name):
    """Any name config.yaml accepts either gives valid Kubernetes names or is refused at export time."""
    cfg = config.Config(data={"project": {"name": name}, "kubernetes": {"registry": "r.example"}}, sources={}, config_path=Path("config.yaml"), env_path=None)
    problems = k8s.export_problems(cfg)
    derived = [k8s.cluster_name(cfg), k8s.secret_name(cfg), k8s.head_service(cfg), f"{k8s.cluster_name(cfg)}-gpu-worker-abcde"]
    if problems:
        assert [p.path for p in problems] == ["$.project.name (CSLR_PROJECT)"] and "expected at most 40 characters" in problems[0].message
    else:
        assert all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", n) for n in derived), derived


# ------------------------------------------------------------------------- monitoring


def test_monitoring_exports_prometheus_that_finds_this_clusters_ray_pods(project, tmp_path):
    """services.monitoring: every Ray pod has a port named `metrics` (the agent's, which KubeRay
    then passes as --metrics-export-port), and the exported Prometheus keeps exactly the pods of
    this RayCluster's label on that port, through a ServiceAccount that may only read pods."""
    _cfg, out, _ = export(project, tmp_path, CASES["data-workspace-custom"])
    got = objects(out)
    (rc,) = got["raycluster.yaml"]
    for template in _ray_pod_templates(rc):
        (container,) = template["spec"]["containers"]
        assert {"name": "metrics", "containerPort": topology.RAY_METRICS_EXPORT_PORT} in container["ports"]
    head_env = {e["name"]: e.get("value") for e in rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert head_env["RAY_PROMETHEUS_HOST"] == "http://prometheus:9090" and head_env["RAY_GRAFANA_HOST"] == "http://grafana:3000"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in got["monitoring.yaml"]}
    assert {("Deployment", "prometheus"), ("Service", "prometheus"), ("Deployment", "grafana"), ("Service", "grafana"), ("Role", "prometheus")} <= kinds
    (role,) = [d for d in got["monitoring.yaml"] if d["kind"] == "Role"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    (config_map,) = [d for d in got["monitoring.yaml"] if d["metadata"]["name"] == "prometheus-config"]
    (ray_job,) = [j for j in yaml.safe_load(config_map["data"]["prometheus.yml"])["scrape_configs"] if j["job_name"] == "ray"]
    keep = {tuple(r["source_labels"]): r["regex"] for r in ray_job["relabel_configs"] if r.get("action") == "keep"}
    assert keep == {("__meta_kubernetes_pod_label_ray_io_cluster",): rc["metadata"]["name"], ("__meta_kubernetes_pod_container_port_name",): "metrics"}
    for deployment in (d for d in got["monitoring.yaml"] if d["kind"] == "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["securityContext"]["runAsNonRoot"] and container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "GF_ANALYTICS_REPORTING_ENABLED", "value": "false"} in container["env"]


def test_without_monitoring_no_metrics_port_and_no_monitoring_file(project, tmp_path):
    _cfg, out, _ = export(project, tmp_path, CASES["cpu-only"])
    got = objects(out)
    assert "monitoring.yaml" not in got
    (rc,) = got["raycluster.yaml"]
    for template in _ray_pod_templates(rc):
        assert all(p["name"] != "metrics" for p in template["spec"]["containers"][0].get("ports", []))
