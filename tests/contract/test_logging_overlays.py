"""Contract: the documented log-shipping overlays (overlays/logging-*.yaml, docs/monitoring.md) merge
with compose.yaml through the real Compose v2 and switch every service's logging driver."""

from __future__ import annotations

import json
import subprocess
from importlib import resources

import jsonschema
import pytest
import yaml

from cslr import compose, config
from cslr.gpu import Gpu, GpuState

pytestmark = pytest.mark.contract

OVERLAYS = config.ROOT / "overlays"
NO_GPU = GpuState("off")
ONE_GPU = GpuState("auto", (Gpu(0, "NVIDIA L4", "23034 MiB"),))
LOKI_URL = "https://loki.lab.example/loki/api/v1/push"


def merged(project, tmp_path, names, gpu, text="services:\n  monitoring: {enabled: true}\n"):
    overlays = ", ".join(str(OVERLAYS / n) for n in names)
    cfg = config.load(project(f"{text}extra_overlays: [{overlays}]\n"), environ={})
    plan = compose.plan(cfg, gpu, test_cluster=False)
    _, out = compose.render(plan, tmp_path / "_build")
    return yaml.safe_load(out)


@pytest.mark.parametrize("gpu, names", [(NO_GPU, ["logging-loki.yaml"]), (ONE_GPU, ["logging-loki.yaml", "logging-loki-gpu.yaml"])])
def test_loki_overlay_switches_every_service_to_the_loki_driver(project, tmp_path, monkeypatch, gpu, names):
    monkeypatch.setenv("LOKI_URL", LOKI_URL)
    doc = merged(project, tmp_path, names, gpu)
    spec = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    jsonschema.validate(doc, spec)
    expected = {"health", "ray-cpu", "redis", "postgres", "mlflow", "marimo", "prometheus", "grafana", "redis-exporter", "postgres-exporter"} | (
        {"ray-gpu"} if gpu.node_enabled else set()
    )
    assert set(doc["services"]) == expected
    for name, svc in doc["services"].items():
        log = svc["logging"]
        assert log["driver"] == "loki", name
        # The URL from the environment; the local copy for `inv logs` stays rotated as before.
        assert (log["options"]["loki-url"], log["options"]["max-size"], log["options"]["max-file"]) == (LOKI_URL, "10m", "3"), name
        assert log["options"]["loki-external-labels"] == "project=cslr,service={{.Name}}"


def test_gelf_overlay_switches_every_service_to_gelf(project, tmp_path, monkeypatch):
    monkeypatch.setenv("GELF_ADDRESS", "udp://logstash.lab.example:12201")
    doc = merged(project, tmp_path, ["logging-gelf.yaml"], NO_GPU)
    assert {svc["logging"]["driver"] for svc in doc["services"].values()} == {"gelf"}
    # Options of the default json-file driver are not left behind for a driver that refuses them.
    assert all(set(svc["logging"]["options"]) == {"gelf-address", "tag", "labels", "mode", "max-buffer-size"} for svc in doc["services"].values())
    assert doc["services"]["health"]["logging"]["options"]["gelf-address"] == "udp://logstash.lab.example:12201"


def test_without_the_address_compose_says_what_to_set(project, tmp_path, monkeypatch):
    monkeypatch.delenv("LOKI_URL", raising=False)
    with pytest.raises((subprocess.CalledProcessError, Exception)) as err:
        merged(project, tmp_path, ["logging-loki.yaml"], NO_GPU)
    assert "set LOKI_URL to your Loki push URL" in str(err.value) + str(getattr(err.value, "stderr", ""))


def test_default_stack_keeps_rotated_json_file_logs(project, tmp_path):
    cfg = config.load(project("services:\n  monitoring: {enabled: true}\n"), environ={})
    _, out = compose.render(compose.plan(cfg, ONE_GPU, test_cluster=False), tmp_path / "_build")
    logging = {name: svc["logging"] for name, svc in yaml.safe_load(out)["services"].items()}
    assert logging and all(v == {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}} for v in logging.values()), logging
