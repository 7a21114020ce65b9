"""Contract: the generated custom-services overlay (services.custom), merged by the real Compose
v2 `config`: each custom service carries its resolved environment, is published on
network.bind_address, is hardened like compose.yaml's services, sits at its address on
ray-network, and gets the telemetry opt-out."""

from __future__ import annotations

import stat
import textwrap

import pytest
import yaml

from cslr import compose
from tests.test_custom_services import ENV, GOOD, NO_GPU, loaded

pytestmark = pytest.mark.contract


def test_the_merged_project_has_the_custom_services_with_their_values(project, tmp_path):
    cfg = loaded(project, textwrap.dedent(GOOD) + "network: {bind_address: 127.0.0.2}\n", ENV).cfg
    plan = compose.plan(cfg, NO_GPU)
    env_text, merged = compose.render(plan, tmp_path / "_build")
    doc = yaml.safe_load(merged)["services"]
    assert doc["my_service"]["environment"]["API_KEY"] == "api-key-from-dotenv"
    assert doc["my_service"]["ports"][0]["host_ip"] == "127.0.0.2" and doc["my_service"]["ports"][0]["published"] == "9000"
    assert doc["my_service"]["cap_drop"] == ["ALL"] and doc["my_service"]["security_opt"] == ["no-new-privileges:true"]
    assert doc["quiet"]["networks"]["ray-network"]["ipv4_address"] == "172.28.0.101"
    base = yaml.safe_load((compose.ROOT / compose.BASE_FILE).read_text())["services"]["health"]
    for key in ("cap_drop", "security_opt", "logging", "restart", "init"):
        assert doc["quiet"][key] == base[key], key
    assert doc["quiet"]["environment"]["DO_NOT_TRACK"] == "true"


def test_generate_writes_the_overlay_world_readable_and_the_values_private(project, tmp_path):
    cfg = loaded(project, GOOD, ENV).cfg
    written = compose.generate(compose.plan(cfg, NO_GPU), tmp_path / "_build")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in written}
    assert modes[compose.CUSTOM_OVERLAY] == 0o644 and modes[".env"] == 0o600
    assert "api-key-from-dotenv" in (tmp_path / "_build" / ".env").read_text()
