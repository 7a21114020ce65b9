"""The Redis and PostgreSQL exporters of services.monitoring (docs/monitoring.md): each runs only
where monitoring and the service it reads both run, at its own address, found by Prometheus
under the names and ports of the model, and its password never reaches argv or a generated file."""

from __future__ import annotations

import re

import pytest
import yaml

from cslr import compose, config, k8s, topology
from cslr.errors import ConfigError
from cslr.gpu import GpuState
from cslr.project import load_validated
from tests.conftest import ROOT, SECRETS

NO_GPU = GpuState("off")
EXPORTERS = ("redis-exporter", "postgres-exporter")
PROMETHEUS_YML = yaml.safe_load((ROOT / "compose" / "prometheus" / "prometheus.yml").read_text())
COMPOSE = yaml.safe_load((ROOT / "compose" / "compose.yaml").read_text())


def load(project, text: str):
    return config.load(project(text), environ={})


@pytest.mark.parametrize(
    "monitoring, redis, mlflow, source, expected",
    [
        (False, True, True, "pull", []),
        (True, True, True, "pull", ["redis-exporter", "postgres-exporter"]),
        (True, True, True, "local", ["redis-exporter", "postgres-exporter"]),
        (True, False, True, "local", ["postgres-exporter"]),
        (True, True, False, "local", ["redis-exporter"]),
        (True, False, False, "pull", []),
    ],
)
def test_an_exporter_runs_only_with_monitoring_and_its_service(project, monitoring, redis, mlflow, source, expected):
    b = lambda v: "true" if v else "false"  # noqa: E731
    cfg = load(project, f"services:\n  monitoring: {{enabled: {b(monitoring)}}}\n  redis: {{enabled: {b(redis)}}}\n  mlflow: {{enabled: {b(mlflow)}}}\n")
    profiles = compose.compose_env(cfg, NO_GPU, source)["COMPOSE_PROFILES"].split(",")
    assert [p for p in profiles if p in EXPORTERS] == expected
    assert [s for s in topology.running(cfg, gpu_node=False) if s in EXPORTERS] == expected
    # Every profile stays defined in the merged file (inactive ones too), as for the other services.
    assert set(EXPORTERS) <= set(compose.render_profiles(test_cluster=False))


def test_with_exporters_needs_both_profiles():
    assert topology.with_exporters(["redis", "monitoring"]) == ["redis", "monitoring", "redis-exporter"]
    assert topology.with_exporters(["redis", "mlflow"]) == ["redis", "mlflow"]
    assert topology.with_exporters(["monitoring"]) == ["monitoring"]


@pytest.mark.parametrize(
    "network, redis_exporter, postgres_exporter",
    [
        ("{}", "172.28.0.62", "172.28.0.63"),
        ("{subnet: 10.9.0.0/24}", "10.9.0.62", "10.9.0.63"),
        ("{subnet: 10.9.0.0/28}", "10.9.0.12", "10.9.0.11"),  # too small: below Prometheus' and Grafana's last addresses
        ("{addresses: {redis_exporter: 172.28.7.7}}", "172.28.7.7", "172.28.0.63"),
    ],
)
def test_exporter_addresses_default_inside_the_subnet(project, network, redis_exporter, postgres_exporter):
    cfg = load(project, f"network: {network}\n")
    env = compose.compose_env(cfg, NO_GPU)
    assert (env["REDIS_EXPORTER_IP"], env["POSTGRES_EXPORTER_IP"]) == (redis_exporter, postgres_exporter)
    if "/28" in network:  # Prometheus and Grafana keep the addresses they had before the exporters
        assert (env["PROMETHEUS_IP"], env["GRAFANA_IP"]) == ("10.9.0.13", "10.9.0.14")
    assert len({env[v] for _, v, _, _ in topology.MONITORING_ADDRESSES}) == 4


def test_an_address_where_an_exporter_would_be_is_refused_only_while_it_runs(project):
    taken = "network:\n  addresses: {marimo: 172.28.0.62}\n"
    load_validated(project(taken), environ={}, detect=lambda mode: NO_GPU)  # monitoring off: valid, as before
    with pytest.raises(ConfigError) as err:
        load_validated(project(taken + "services:\n  monitoring: {enabled: true}\n"), environ={}, detect=lambda mode: NO_GPU)
    problems = [str(p) for p in err.value.problems if p.severity == "error"]
    assert any("network.addresses.redis_exporter" in p and "already used by network.addresses.marimo" in p for p in problems), problems
    # Redis off: its exporter does not run, so the address is free again.
    load_validated(project(taken + "services:\n  monitoring: {enabled: true}\n  redis: {enabled: false}\n"), environ={}, detect=lambda mode: NO_GPU)


def test_prometheus_finds_the_exporters_by_the_models_names_and_ports():
    jobs = {job["job_name"]: job for job in PROMETHEUS_YML["scrape_configs"]}
    for service, job, _, _ in k8s.EXPORTERS:  # the Kubernetes export's job names are Compose's
        (sd,) = jobs[job]["dns_sd_configs"]
        assert (sd["names"], sd["type"], sd["port"]) == ([service], "A", topology.EXPORTER_PORTS[service])
        (relabel,) = jobs[job]["relabel_configs"]
        assert relabel["replacement"] == f"${{1}}:{topology.EXPORTER_PORTS[service]}"
        assert COMPOSE["services"][service]["hostname"] == service


def test_the_passwords_reach_the_exporters_by_environment_only(project):
    cfg = load(project, "services:\n  monitoring: {enabled: true}\n")
    plan = compose.plan(cfg, NO_GPU)
    assert "redis-exporter" in plan.active_profiles and "postgres-exporter" in plan.active_profiles
    for name, text in plan.generated.items():
        for secret in (SECRETS["REDIS_PASSWORD"], SECRETS["POSTGRES_PASSWORD"]):
            assert secret not in text, name
    assert not any(SECRETS[k] in " ".join(plan.command(["up"])) for k in ("REDIS_PASSWORD", "POSTGRES_PASSWORD"))
    redis_exp, pg_exp = COMPOSE["services"]["redis-exporter"], COMPOSE["services"]["postgres-exporter"]
    for svc in (redis_exp, pg_exp):
        assert "command" not in svc and "entrypoint" not in svc  # the image's entrypoint, no arguments
    assert redis_exp["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert pg_exp["environment"]["DATA_SOURCE_PASS"].startswith("${POSTGRES_PASSWORD:?")
    # What both Debian's exporters (1.45, 0.11) and the official ones (1.67, 0.16) honour.
    assert set(redis_exp["environment"]) == {"REDIS_ADDR", "REDIS_PASSWORD"}
    assert set(pg_exp["environment"]) == {"DATA_SOURCE_URI", "DATA_SOURCE_USER", "DATA_SOURCE_PASS"}
    assert pg_exp["environment"]["DATA_SOURCE_URI"].startswith(f"postgres:{topology.POSTGRES_PORT}/")
    assert redis_exp["environment"]["REDIS_ADDR"] == f"redis://{topology.redis_address()}"


def _export(project, text: str) -> dict[str, list[dict]]:
    files, _, _ = k8s.manifests(load(project, text + "kubernetes: {registry: registry.lab.example:5000/lab}\n"))
    return files


def test_kubernetes_export_has_the_exporters_of_the_services_it_runs(project):
    files = _export(project, "services:\n  monitoring: {enabled: true}\n  redis: {enabled: false}\n")
    names = {(o["kind"], o["metadata"]["name"]) for o in files["monitoring.yaml"]}
    assert {("Deployment", "postgres-exporter"), ("Service", "postgres-exporter")} <= names
    assert not any(n == "redis-exporter" for _, n in names)
    (cm,) = [o for o in files["monitoring.yaml"] if o["metadata"]["name"] == "prometheus-config"]
    jobs = {j["job_name"]: j for j in yaml.safe_load(cm["data"]["prometheus.yml"])["scrape_configs"]}
    assert jobs["postgres"]["static_configs"] == [{"targets": ["postgres-exporter:9187"]}] and "redis" not in jobs


def test_kubernetes_exporters_read_the_passwords_from_the_secret(project):
    files = _export(project, "services:\n  monitoring: {enabled: true}\n")
    deployments = {o["metadata"]["name"]: o for o in files["monitoring.yaml"] if o["kind"] == "Deployment"}
    for name, key, var, uid in (
        ("redis-exporter", "REDIS_PASSWORD", "REDIS_PASSWORD", 59000),
        ("postgres-exporter", "POSTGRES_PASSWORD", "DATA_SOURCE_PASS", 65534),
    ):
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "cslr-secrets", "key": key}
        assert container["securityContext"]["runAsUser"] == uid and container["securityContext"]["runAsNonRoot"] is True
        assert container["ports"] == [{"name": "http", "containerPort": topology.EXPORTER_PORTS[name]}]
    text = yaml.safe_dump(files["monitoring.yaml"])
    assert not re.search(f"{SECRETS['REDIS_PASSWORD']}|{SECRETS['POSTGRES_PASSWORD']}", text)
