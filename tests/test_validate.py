"""Every validation rule: one good and one bad case each, and the exact error format."""

from __future__ import annotations

import pytest

from cslr import config, validate
from cslr.errors import ConfigError
from tests.conftest import ROOT


def problems(cfg_path, environ=None, gpu_node=False):
    cfg = config.load(cfg_path, environ=environ or {})
    try:
        return validate.validate(cfg, gpu_node=gpu_node)
    except ConfigError as exc:
        return exc.problems


def errors(*args, **kw):
    return [str(p) for p in problems(*args, **kw) if p.severity == "error"]


def test_default_config_with_secrets_is_valid(project):
    assert errors(project("{}\n")) == []


def test_shipped_config_yaml_is_valid(tmp_path):
    from pathlib import Path

    from tests.conftest import write_project

    text = (Path(__file__).parent.parent / "config.yaml").read_text()
    assert errors(write_project(tmp_path, text)) == []


def test_unknown_key_points_at_the_key_and_suggests(project):
    out = errors(project("network:\n  subnett: 10.0.0.0/24\n"))
    assert out == ["config.yaml:2:3: $.network.subnett: unknown key 'subnett' (did you mean 'subnet'?); expected one of: subnet, bind_address, addresses"]


def test_type_error_says_found_and_expected(project):
    out = errors(project("services:\n  health: {port: '8888'}\n"))
    assert out == ["config.yaml:2:18: $.services.health.port (HEALTH_HOST_PORT): found '8888' (a string), expected an integer"]


def test_all_errors_in_one_run_in_file_order(project):
    out = errors(project("gpu: maybe\nservices:\n  mlflow: {port: 0}\nnetwork:\n  subnet: 10.0.0.0/33\n"))
    assert [line.split(": ")[0] for line in out] == ["config.yaml:1:6", "config.yaml:3:18", "config.yaml:5:11"]


@pytest.mark.parametrize("subnet", ["10.0.0.0/33", "10.0.0.1/24", "not-a-net", "fe80::/64"])
def test_subnet_must_be_an_ipv4_cidr(project, subnet):
    out = errors(project(f"network:\n  subnet: {subnet}\n"))
    assert any("$.network.subnet" in line and "expected an IPv4 CIDR" in line for line in out), out


def test_good_subnet_with_addresses_inside(project):
    text = "network:\n  subnet: 10.9.0.0/24\n  addresses: {health: 10.9.0.2, ray_cpu: 10.9.0.10, ray_gpu: 10.9.0.11, redis: 10.9.0.20, mlflow: 10.9.0.30, postgres: 10.9.0.31, marimo: 10.9.0.40}\n"
    assert errors(project(text)) == []


def test_address_outside_subnet(project):
    out = errors(project("network:\n  subnet: 10.9.0.0/24\n"))
    assert any("$.network.addresses.health" in line and "expected an address inside network.subnet 10.9.0.0/24" in line for line in out)


@pytest.mark.parametrize("addr,what", [("172.28.0.0", "network address"), ("172.28.255.255", "broadcast address"), ("172.28.0.1", "bridge gateway")])
def test_address_not_network_broadcast_or_gateway(project, addr, what):
    out = errors(project(f"network:\n  addresses:\n    redis: {addr}\n"))
    assert len(out) == 1 and what in out[0] and out[0].startswith("config.yaml:3:12: $.network.addresses.redis (REDIS_IP)")


def test_addresses_unique(project):
    out = errors(project("network:\n  addresses:\n    redis: 172.28.0.10\n"))
    assert out == [
        "config.yaml:3:12: $.network.addresses.redis (REDIS_IP): found 172.28.0.10, already used by network.addresses.ray_cpu; expected a unique address"
    ]


def test_address_must_be_ipv4_format(project):
    out = errors(project("network:\n  addresses:\n    redis: 172.28.0.300\n"))
    assert out and "expected an ipv4 address" in out[0]


@pytest.mark.parametrize("size", ["512m", "16g", "1.5g", "2048"])
def test_sizes_parse(project, size):
    text = f"ray:\n  cpu:\n    memory: 64g\n    shm_size: {size}\n"
    assert errors(project(text)) == []


def test_bad_size(project):
    out = errors(project("ray:\n  cpu:\n    memory: lots\n"))
    assert any("$.ray.cpu.memory (RAY_CPU_MEMORY)" in line and "found 'lots'" in line for line in out), out


def test_shm_larger_than_memory_is_an_error(project):
    out = errors(project("ray:\n  cpu:\n    memory: 4g\n    shm_size: 5g\n"))
    assert out == ["config.yaml:4:15: $.ray.cpu.shm_size (RAY_CPU_SHM_SIZE): found 5g > memory 4g, expected shm_size ≤ memory"]


def test_shm_below_30_percent_is_a_warning_only(project):
    found = problems(project("ray:\n  cpu:\n    memory: 10g\n    shm_size: 2g\n"))
    assert [p.severity for p in found] == ["warning"]
    assert "below 30 % of memory" in str(found[0])


def test_object_store_must_fit_in_shm(project):
    out = errors(project("ray:\n  cpu:\n    memory: 10g\n    shm_size: 3g\n    object_store_memory: 4g\n"))
    assert len(out) == 1 and "object_store_memory" in out[0] and "fit in /dev/shm" in out[0]


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_range(project, port):
    out = errors(project(f"services:\n  redis:\n    port: {port}\n"))
    assert len(out) == 1 and "$.services.redis.port (REDIS_HOST_PORT)" in out[0]


def test_ports_unique_across_enabled_services(project):
    out = errors(project("services:\n  redis:\n    port: 5000\n"))
    assert len(out) == 1 and "already published by $.services.mlflow.port" in out[0]


def test_port_of_disabled_service_may_repeat(project):
    assert errors(project("services:\n  redis:\n    port: 5000\n  mlflow:\n    enabled: false\n")) == []


def test_gpu_node_ports_count_only_when_the_gpu_node_runs(project):
    text = "ray:\n  gpu:\n    ports: {gcs: 8888}\n"
    assert errors(project(text), gpu_node=False) == []
    assert any("already published by $.services.health.port" in line for line in errors(project(text), gpu_node=True))


@pytest.mark.parametrize("entry", ["bad_name", "-lead", "host:99999", "host:x"])
def test_whitelist_entries_are_hostnames(project, entry):
    out = errors(project(f"nodes:\n  head_whitelist: [ray-cpu, '{entry}']\n"))
    assert len(out) == 1 and "$.nodes.head_whitelist[1]" in out[0] and "expected a hostname" in out[0]


def test_whitelist_entries_with_ports_are_fine(project):
    assert errors(project("nodes:\n  head_whitelist: ['ray-cpu:6379', 'ray-gpu:6380']\n")) == []


def test_whitelist_unique(project):
    out = errors(project("nodes:\n  head_whitelist: [ray-cpu, RAY-CPU]\n"))
    assert len(out) == 1 and "twice" in out[0]


def test_empty_whitelist_needs_a_head_address(project):
    assert any("empty whitelist" in line for line in errors(project("nodes:\n  head_whitelist: []\n")))
    assert errors(project("nodes:\n  head_whitelist: []\n  head_address: 10.1.2.3:6379\n")) == []


def test_whitelist_entry_not_on_this_host_is_a_warning(project):
    found = problems(project("nodes:\n  head_whitelist: [ray-cpu, elsewhere]\n"))
    assert [p.severity for p in found] == ["warning"] and "'elsewhere' is not a node of this host" in str(found[0])


def test_legacy_nodes_yaml_is_an_error_with_migration(project, tmp_path):
    path = project("{}\n")
    (tmp_path / "nodes.yaml").write_text("head_whitelist: [a, b]\n")
    out = errors(path)
    assert len(out) == 1
    assert out[0].startswith("nodes.yaml: $.nodes: found a legacy nodes.yaml")
    assert "head_whitelist:\n  - a\n  - b" in out[0]


def test_secret_in_config_yaml_is_an_error(project):
    out = errors(project("secrets:\n  redis_password: hunter2\n"))
    assert out == [
        "config.yaml:2:19: $.secrets.redis_password (REDIS_PASSWORD): a secret is set in config.yaml, which git tracks; expected it in .env as REDIS_PASSWORD=... (move it there and delete it here)"
    ]


def test_missing_secrets_point_to_inv_init(project):
    out = errors(project("{}\n", env={}))
    assert len(out) == 5 and all("run `inv init`" in line for line in out)


def test_ray_token_not_needed_when_auth_disabled(project):
    env = {k: v for k, v in {"POSTGRES_PASSWORD": "a", "REDIS_PASSWORD": "b", "MARIMO_TOKEN": "c", "CSLR_CONTROL_SECRET": "d"}.items()}
    assert errors(project("ray:\n  auth: disabled\n", env=env)) == []
    assert len(errors(project("ray:\n  auth: token\n", env=env))) == 1


def test_gcs_fault_tolerance_needs_redis(project):
    assert errors(project("ray:\n  gcs_fault_tolerance: true\n")) == []
    out = errors(project("ray:\n  gcs_fault_tolerance: true\nservices:\n  redis:\n    enabled: false\n"))
    assert len(out) == 1 and "GCS fault tolerance" in out[0]


@pytest.mark.parametrize(
    "text,env,on",
    [
        ("{}\n", {}, False),  # the default: off (Ray puts the Redis password in argv; docs/security.md)
        ("ray:\n  gcs_fault_tolerance: auto\n", {}, True),  # auto: on with the default Redis
        ("ray:\n  gcs_fault_tolerance: auto\nservices:\n  redis:\n    enabled: false\n", {}, False),  # auto follows Redis, no error
        ("ray:\n  gcs_fault_tolerance: false\n", {}, False),
        ("ray:\n  gcs_fault_tolerance: true\n", {}, True),
        ("{}\n", {"RAY_GCS_FT": "0"}, False),
        ("{}\n", {"RAY_GCS_FT": "auto"}, True),
    ],
)
def test_gcs_fault_tolerance_is_off_by_default_and_auto_follows_redis(project, text, env, on):
    path = project(text)
    assert errors(path, environ=env) == []
    cfg = config.load(path, environ=env)
    assert cfg.gcs_fault_tolerance() is on


def test_gcs_fault_tolerance_refuses_other_words(project):
    out = errors(project("ray:\n  gcs_fault_tolerance: maybe\n"))
    assert len(out) == 1 and "gcs_fault_tolerance" in out[0] and "auto" in out[0], out


def test_bind_address_must_be_an_ip(project):
    assert len(errors(project("network:\n  bind_address: localhost\n"))) == 1
    assert errors(project("network:\n  bind_address: 0.0.0.0\n")) == []


def test_errors_from_dotenv_point_at_dotenv(project):
    out = errors(project("{}\n", env={**__import__("tests.conftest", fromlist=["SECRETS"]).SECRETS, "CSLR_SUBNET": "bogus"}))
    assert len(out) == 1 and out[0].startswith(".env:6:1: $.network.subnet (CSLR_SUBNET): found 'bogus'")


def test_extra_overlays_must_exist(project, tmp_path):
    (tmp_path / "mine.yaml").write_text("services: {}\n")
    assert errors(project("extra_overlays: [mine.yaml]\n")) == []
    out = errors(project("extra_overlays: [mine.yaml, gone.yaml]\n"))
    assert out == ["config.yaml:1:29: $.extra_overlays[1]: found 'gone.yaml', which is not a file (relative to config.yaml); expected a Compose file"]


def test_image_problems_join_the_other_problems_in_one_run(project):
    """Bug (issue 19): the images' rules ran only when every other rule passed, so a user fixed one
    batch of errors and then met another. One run reports both."""
    from cslr.gpu import GpuState
    from cslr.project import load_validated

    path = project("network:\n  subnet: 10.0.0.0/30\nimages:\n  requirements: missing-requirements.txt\n")
    with pytest.raises(ConfigError) as caught:
        load_validated(path, environ={}, detect=lambda mode: GpuState("off", [], "test"))
    paths = {p.path for p in caught.value.problems if p.severity == "error"}
    assert "$.images.requirements" in paths and any(p.startswith("$.network.subnet") for p in paths)


def test_every_rule_is_in_the_one_list():
    groups = {rule.group for rule in validate.RULES}
    assert {"topology", "secrets", "host folders", "multi-host", "images"} <= groups
    names = [rule.name for rule in validate.RULES]
    assert len(names) == len(set(names))


def test_a_rule_on_a_schema_refused_subtree_does_not_run(project):
    """The schema's message already says what is wrong with `images:`; the images rules skip it."""
    out = errors(project("images:\n  requirements: 5\n"))
    assert len([line for line in out if "$.images.requirements" in line]) == 1


def test_an_address_that_takes_the_derived_monitoring_address_is_refused_with_the_fix(tmp_path):
    # Prometheus' address defaults to the subnet's 60th host when network.addresses.prometheus is
    # empty: a stack service given that address would share it with Prometheus.
    text = (ROOT / "config.yaml").read_text().replace("    redis: 172.28.0.20 ", "    redis: 172.28.0.60 ")
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        validate.validate(config.load(tmp_path / "config.yaml", None))
    problems = [str(p) for p in err.value.problems]
    assert any(
        "network.addresses.prometheus" in p and "already used by network.addresses.redis" in p and "set network.addresses.prometheus" in p for p in problems
    ), problems
