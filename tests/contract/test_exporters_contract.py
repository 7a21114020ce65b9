"""Contract: with services.monitoring on, the real Compose v2 accepts the project with the Redis
and PostgreSQL exporters, starts each only where its service runs, and gives each its password by
environment only, hardened like every other service (docs/monitoring.md)."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest
import yaml

from cslr import compose, config, topology
from cslr.gpu import GpuState
from tests.conftest import SECRETS

pytestmark = pytest.mark.contract

NO_GPU = GpuState("off")


def render(project, text, tmp_path):
    cfg = config.load(project(text), environ={})
    plan = compose.plan(cfg, NO_GPU, test_cluster=False, image_source="local")
    _, merged = compose.render(plan, tmp_path / "_build")
    return plan, yaml.safe_load(merged)


def active(doc, plan):
    on = set(plan.active_profiles)
    return {n for n, s in doc["services"].items() if not s.get("profiles") or on & set(s["profiles"])}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("services:\n  monitoring: {enabled: true}\n", {"redis-exporter", "postgres-exporter"}),
        ("services:\n  monitoring: {enabled: true}\n  redis: {enabled: false}\n", {"postgres-exporter"}),
        ("services:\n  monitoring: {enabled: true}\n  mlflow: {enabled: false}\n", {"redis-exporter"}),
        ("{}\n", set()),
    ],
)
def test_compose_starts_an_exporter_only_where_its_service_runs(project, tmp_path, text, expected):
    plan, doc = render(project, text, tmp_path)
    spec = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    jsonschema.validate(doc, spec)
    assert active(doc, plan) & {"redis-exporter", "postgres-exporter"} == expected


def test_exporters_are_hardened_and_get_their_passwords_by_environment_only(project, tmp_path):
    _, doc = render(project, "services:\n  monitoring: {enabled: true}\n", tmp_path)
    redis_exp, pg_exp = doc["services"]["redis-exporter"], doc["services"]["postgres-exporter"]
    # The local stand-ins, with the official images' names for their settings.
    assert (redis_exp["image"], pg_exp["image"]) == ("cslr-local/redis-exporter:1", "cslr-local/postgres-exporter:0.11")
    assert redis_exp["environment"] == {"REDIS_ADDR": "redis://redis:6379", "REDIS_PASSWORD": SECRETS["REDIS_PASSWORD"], **topology.telemetry_env(False)}
    assert pg_exp["environment"]["DATA_SOURCE_PASS"] == SECRETS["POSTGRES_PASSWORD"]
    assert pg_exp["environment"]["DATA_SOURCE_URI"] == "postgres:5432/mlflow?sslmode=disable" and pg_exp["environment"]["DATA_SOURCE_USER"] == "mlflow"
    for name, svc in (("redis-exporter", redis_exp), ("postgres-exporter", pg_exp)):
        text = json.dumps({k: v for k, v in svc.items() if k != "environment"})
        assert SECRETS["REDIS_PASSWORD"] not in text and SECRETS["POSTGRES_PASSWORD"] not in text, name
        assert svc.get("command") is None and svc.get("entrypoint") is None and svc.get("user") is None, name  # the image's, as-is
        assert svc["cap_drop"] == ["ALL"] and "cap_add" not in svc and svc["security_opt"] == ["no-new-privileges:true"], name
        assert svc["mem_limit"] == str(128 * 1024**2) and svc["restart"] == "unless-stopped" and not svc.get("ports"), name
        assert svc["logging"]["options"] == {"max-size": "10m", "max-file": "3"}, name
    assert redis_exp["networks"]["ray-network"]["ipv4_address"] == "172.28.0.62"
    assert pg_exp["networks"]["ray-network"]["ipv4_address"] == "172.28.0.63"
    assert pg_exp["depends_on"]["postgres"]["condition"] == "service_healthy"
