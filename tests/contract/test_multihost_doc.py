"""Contract: docs/multi-host.md followed literally on the shipped config.yaml gives, for each
host, a project the real Compose v2 binary accepts, with the ports the doc's table lists."""

from __future__ import annotations

import pytest
import yaml

from cslr import compose, config
from cslr.gpu import GpuState
from tests.test_one_setting import multi_host_project

pytestmark = pytest.mark.contract


@pytest.mark.parametrize("host", ["host-a", "host-b"])
def test_each_host_of_the_doc_renders(tmp_path, monkeypatch, host):
    monkeypatch.chdir(tmp_path)
    cfg = config.load(multi_host_project(tmp_path), environ={})
    plan = compose.plan(cfg, GpuState("off"), test_cluster=False, host=host)
    _, merged = compose.render(plan, tmp_path / "_build")
    doc = yaml.safe_load(merged)
    cpu, gpu = doc["services"]["ray-cpu"]["environment"], doc["services"]["ray-gpu"]["environment"]
    assert (cpu["RAY_HEAD_PORT"], cpu["NODE_AGENT_PORT"], cpu["RAY_CLIENT_SERVER_PORT"], cpu["RAY_DASHBOARD_PORT"]) == ("6379", "7379", "10011", "8265")
    assert (gpu["RAY_HEAD_PORT"], gpu["NODE_AGENT_PORT"], gpu["RAY_CLIENT_SERVER_PORT"], gpu["RAY_DASHBOARD_PORT"]) == ("6380", "7380", "10012", "8266")
    assert cpu["HEAD_WHITELIST"] == "ray-cpu-host-a:6379,ray-gpu-host-a:6380"
    assert not list((tmp_path / "_build").glob(".render-*"))
