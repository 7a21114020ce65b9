"""cslr/topology.py is the one model of services, profiles and ports: the compose files agree
with it, and the published-port list of validation comes from it."""

from __future__ import annotations

import pytest
import yaml

from cslr import config, topology, validate
from tests.conftest import ROOT
from tests.test_one_setting import _TagTolerantLoader

BASE = yaml.safe_load((ROOT / "compose" / "compose.yaml").read_text())
GPU = yaml.load((ROOT / "overlays" / "gpu.yaml").read_text(), Loader=_TagTolerantLoader)


def compose_service(name: str) -> dict:
    return GPU["services"][name] if name in GPU["services"] else BASE["services"][name]


def _default(setting: tuple) -> int:
    node = config.defaults()
    for part in setting:
        node = node[part]
    return node


@pytest.mark.parametrize("svc", topology.SERVICES, ids=lambda s: s.name)
def test_compose_publishes_exactly_the_topologys_ports(svc):
    expected = [f"${{CSLR_BIND_ADDRESS:-127.0.0.1}}:${{{topology.env_name(p.setting)}:-{_default(p.setting)}}}:{p.container}" for p in svc.ports]
    assert compose_service(svc.name).get("ports", []) == expected


@pytest.mark.parametrize("svc", topology.SERVICES, ids=lambda s: s.name)
def test_compose_profiles_are_the_topologys(svc):
    assert compose_service(svc.name).get("profiles") == ([svc.profile] if svc.profile else None)


@pytest.mark.parametrize("svc", topology.SERVICES, ids=lambda s: s.name)
def test_compose_memory_limit_is_the_topologys_setting(svc):
    assert compose_service(svc.name)["mem_limit"] == f"${{{topology.env_name(svc.memory)}:-{_default(svc.memory)}}}"


def test_every_compose_service_is_in_the_topology():
    names = {s.name for s in topology.SERVICES}
    assert set(BASE["services"]) | set(GPU["services"]) == names


def test_optional_services_are_the_profiles():
    assert topology.OPTIONAL_SERVICES == ("redis", "mlflow", "marimo", "monitoring", "grafana", "redis-exporter", "postgres-exporter")


def test_published_ports_follow_switches_and_the_gpu_node(project):
    cfg = config.load(project("services:\n  marimo: {enabled: false}\n"), environ={})
    on = dict(validate.published_ports(cfg, gpu_node=True))
    off = dict(validate.published_ports(cfg, gpu_node=False))
    assert on[("ray", "gpu", "ports", "gcs")] == 6380 and ("ray", "gpu", "ports", "gcs") not in off
    assert ("services", "marimo", "port") not in on and on[("services", "mlflow", "port")] == 5000
    assert list(off) == [
        ("services", "health", "port"),
        ("services", "health", "ray_client_port"),
        ("services", "health", "dashboard_port"),
        ("ray", "cpu", "ports", "gcs"),
        ("ray", "cpu", "ports", "dashboard"),
        ("services", "redis", "port"),
        ("services", "mlflow", "port"),
    ]


def test_owner_and_running_services(project):
    from cslr import config, topology

    assert topology.owner(("services", "health", "ray_client_port")) == "health"
    assert topology.owner(("ray", "gpu", "ports", "dashboard")) == "ray-gpu"
    cfg = config.load(project("services:\n  marimo: {enabled: false}\n"), environ={})
    assert topology.running(cfg, gpu_node=False) == ["health", "ray-cpu", "redis", "mlflow", "postgres"]
    assert "ray-gpu" in topology.running(cfg, gpu_node=True)
