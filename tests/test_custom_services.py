"""Custom services (`services.custom.NAME`): validation, the generated overlay, the listings and
the firewall. The engine is not used here (tests/e2e/test_custom_service.py starts one)."""

from __future__ import annotations

import re
import subprocess
import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cslr import compose, config, multihost, report, topology, validate
from cslr.errors import ConfigError, PlatformError
from cslr.gpu import GpuState
from cslr.project import load_validated
from tests.conftest import ROOT, SECRETS, write_project

NO_GPU = GpuState("off")
POSITION = re.compile(r"^(?:config\.yaml|\.env)(?::\d+(?::\d+)?)?: ")
GOOD = """
    gpu: off
    services:
      custom:
        my_service:
          image: my-org/my-service:latest
          port: 9000
          environment: {API_KEY: "${MY_API_KEY}", GREETING: "costs $$5", COUNT: 3}
          healthcheck: {http: /health}
        quiet: {image: "registry.lab.example:5000/tools/worker@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
"""
ENV = {**SECRETS, "MY_API_KEY": "api-key-from-dotenv"}


def loaded(project, text, env=None):
    return load_validated(project(text, env), environ={}, detect=lambda mode: NO_GPU)


def refusal(project, text, env=None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        loaded(project, text, env if env is not None else ENV)
    assert err.value.exit_code == 2
    return [str(p) for p in err.value.problems if p.severity == "error"]


def one(lines: list[str], where: str) -> str:
    found = [line for line in lines if where in line]
    assert found, lines
    assert found[0].startswith("config.yaml:"), found[0]
    return found[0]


# ------------------------------------------------------------------------- the model


def test_defaults_are_applied_and_addresses_assigned_in_name_order(project):
    cfg = loaded(project, GOOD, ENV).cfg
    services = {s.name: s for s in topology.custom_services(cfg)}
    assert sorted(services) == ["my_service", "quiet"]
    assert services["my_service"].container_port == 9000 and services["my_service"].memory == "512m"
    assert services["quiet"].port is None and services["quiet"].healthcheck is None
    assert services["my_service"].healthcheck == {"http": "/health", "interval_seconds": 5, "retries": 5, "start_period_seconds": 30}
    assert topology.custom_addresses(cfg) == {"my_service": "172.28.0.100", "quiet": "172.28.0.101"}


def test_an_automatic_address_skips_the_given_ones_and_a_small_subnet_wraps(project):
    text = """
        network: {subnet: 10.5.0.0/26, addresses: {health: 10.5.0.2, ray_cpu: 10.5.0.3, ray_gpu: 10.5.0.4, redis: 10.5.0.5, mlflow: 10.5.0.6, postgres: 10.5.0.7, marimo: 10.5.0.8}}
        services:
          custom:
            a: {image: "x:1"}
            b: {image: "x:1", address: 10.5.0.62}
    """
    cfg = loaded(project, text).cfg
    # /26: host numbers 1..62; 100 does not exist, so from 62 (taken by b), then from 2 upwards.
    assert topology.custom_addresses(cfg) == {"a": "10.5.0.9", "b": "10.5.0.62"}


def test_published_and_owner_include_the_custom_ports(project):
    cfg = loaded(project, GOOD, ENV).cfg
    published = dict(topology.published(cfg, gpu_node=False))
    assert published[("services", "custom", "my_service", "port")] == 9000
    assert topology.owner(("services", "custom", "my_service", "port")) == "my_service"
    assert not any(path[:3] == ("services", "custom", "quiet") for path in published)


def test_reserved_names_hold_the_test_runner():
    assert compose.TEST_SERVICE in topology.RESERVED_NAMES
    assert set(topology.RESERVED_NAMES) >= {s.name for s in topology.SERVICES}


# ------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "entry, where, message",
    [
        ("redis: {image: 'x:1'}", "$.services.custom.redis:", "the stack's own service 'redis'"),
        ("ray_cpu: {image: 'x:1'}", "$.services.custom.ray_cpu:", "the stack's own service 'ray-cpu'"),
        ("test-cluster: {image: 'x:1'}", "$.services.custom.test-cluster:", "the stack's own service"),
        ("My-Service: {image: 'x:1'}", "$.services.custom.My-Service:", "found the name 'My-Service', expected a name matching"),
        ("svc: {image: 'My Org/Image:latest'}", "$.services.custom.svc.image:", "expected an image reference"),
        ("svc: {image: 'x:1', port: 6381}", "$.services.custom.svc.port:", "found host port 6381, already published by $.services.redis.port"),
        ("svc: {image: 'x:1', port: 70000}", "$.services.custom.svc.port:", "expected ≤ 65535"),
        ("svc: {image: 'x:1', address: 10.0.0.5}", "$.services.custom.svc.address:", "expected an address inside network.subnet 172.28.0.0/16"),
        ("svc: {image: 'x:1', address: 172.28.0.1}", "$.services.custom.svc.address:", "bridge gateway"),
        ("svc: {image: 'x:1', address: 172.28.0.30}", "$.services.custom.svc.address:", "already used by network.addresses.mlflow"),
        # Prometheus' address is derived (.60 of the subnet) when not given: still taken.
        ("svc: {image: 'x:1', address: 172.28.0.60}", "$.services.custom.svc.address:", "already used by network.addresses.prometheus"),
        ("svc: {image: 'x:1', environment: {X: '${NOT_SET}'}}", "$.services.custom.svc.environment.X:", "set neither in .env nor in the environment"),
        ("svc: {image: 'x:1', environment: {X: 'a$b'}}", "$.services.custom.svc.environment.X:", "$$ for a literal dollar"),
        ("svc: {image: 'x:1', environment: {DB_PASSWORD: hunter2}}", "$.services.custom.svc.environment.DB_PASSWORD:", "expected a secret in .env"),
        ("svc: {image: 'x:1', environment: {'1BAD': x}}", "$.services.custom.svc.environment.1BAD:", "found the name '1BAD'"),
        ("svc: {image: 'x:1', healthcheck: {}}", "$.services.custom.svc.healthcheck:", "neither command nor http"),
        ("svc: {image: 'x:1', healthcheck: {http: /h, command: ['true']}}", "$.services.custom.svc.healthcheck:", "both command and http"),
        ("svc: {image: 'x:1', healthcheck: {http: /h}}", "$.services.custom.svc.healthcheck.http:", "expected container_port"),
        ("svc: {image: 'x:1', volumes: [{source: /does/not/exist, target: /x}]}", "$.services.custom.svc.volumes[0].source:", "missing on this host"),
        ("svc: {image: 'x:1', volumes: [{source: relative/dir, target: /x}]}", "$.services.custom.svc.volumes[0].source:", "expected an absolute host path"),
        ("svc: {image: 'x:1', volumes: [{source: /tmp, target: /}]}", "$.services.custom.svc.volumes[0].target:", "other than '/'"),
        ("svc: {image: 'x:1', memory: 12q}", "$.services.custom.svc.memory:", "expected a value matching"),
        ("svc: {image: 'x:1', prot: 9000}", "$.services.custom.svc.prot:", "did you mean 'port'?"),
        ("svc: {port: 9000}", "$.services.custom.svc:", "missing key 'image'"),
    ],
)
def test_a_bad_custom_service_is_refused_with_its_line(project, entry, where, message):
    line = one(refusal(project, f"services:\n  custom:\n    {entry}\n"), where)
    assert message in line, line


def test_two_custom_services_on_one_port_or_address_are_refused(project):
    lines = refusal(
        project,
        """
        services:
          custom:
            a: {image: "x:1", port: 9000, address: 172.28.5.5}
            b: {image: "x:1", port: 9000, address: 172.28.5.5}
            my_svc: {image: "x:1"}
            my-svc: {image: "x:1"}
        """,
    )
    assert "found host port 9000, already published by $.services.custom.a.port" in one(lines, "$.services.custom.b.port:")
    assert "already used by services.custom.a.address" in one(lines, "$.services.custom.b.address:")
    assert "reads as services.custom.my-svc with '_' as '-'" in one(lines, "$.services.custom.my_svc:")


def test_a_literal_secret_is_refused_but_a_reference_to_dotenv_is_not(project):
    assert loaded(project, "services:\n  custom:\n    svc: {image: 'x:1', environment: {API_TOKEN: '${T}'}}\n", {**SECRETS, "T": "t"}).cfg
    line = one(refusal(project, "services:\n  custom:\n    svc: {image: 'x:1', environment: {API_TOKEN: abc}}\n"), "API_TOKEN")
    assert "abc" not in line


def test_a_reference_may_come_from_the_environment(project):
    path = project("services:\n  custom:\n    svc: {image: 'x:1', environment: {X: '${FROM_ENV}'}}\n")
    cfg = load_validated(path, environ={"FROM_ENV": "e"}, detect=lambda mode: NO_GPU).cfg
    assert compose.custom_env(cfg) == {"CSLR_CUSTOM_SVC__X": "e"}


@pytest.mark.parametrize(
    "image",
    [
        "redis",
        "redis:7",
        "my-org/my-service:latest",
        "localhost:5000/a/b_c__d.e-f:v1.2-rc_3",
        "registry.lab.example/team/tool@sha256:" + "a" * 64,
        "cslr-local/redis:7",
    ],
)
def test_image_references_docker_accepts_are_accepted(image):
    assert validate.IMAGE_REFERENCE.match(image)


@pytest.mark.parametrize("image", ["", "UPPER/case", "a b", "x:", ":tag", "a//b", "a:tag:tag", "-a", "a@sha256:xyz", "a/", "x:" + "t" * 200])
def test_image_references_docker_refuses_are_refused(image):
    assert not validate.IMAGE_REFERENCE.match(image)


# ------------------------------------------------------------------------- hostile values


def cases(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.text(max_size=20),
    st.sampled_from(["", "$", "${", "${X}", "$$", "${A-B}", "/", "/tmp", "redis", "ray-cpu", "x:1", "172.28.0.1", "0.0.0.0", "9000", "512m"]),
)
hostile = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
keys = st.sampled_from(["enabled", "image", "port", "container_port", "address", "command", "environment", "volumes", "healthcheck", "memory"])


def assert_clean(err: PlatformError | None) -> None:
    if err is None:
        return
    assert err.exit_code == 2
    lines = [str(p) for p in err.problems if p.severity == "error"] if isinstance(err, ConfigError) else [str(err)]
    assert lines and all(POSITION.match(line) and len(line) < 600 for line in lines), lines


@cases(300)
@given(name=st.one_of(st.text(max_size=12), st.sampled_from(["redis", "ray_gpu", "a", "my_service"])), key=keys, value=hostile)
def test_any_value_in_a_custom_service_is_accepted_or_refused_with_a_position(tmp_path, monkeypatch, name, key, value):
    monkeypatch.chdir(tmp_path)
    entry = {"image": "x:1", key: value}
    doc = {"gpu": "off", "services": {"custom": {name: entry}}}
    path = write_project(tmp_path, yaml.safe_dump(doc, allow_unicode=True))
    try:
        cfg = config.load(path, environ={})
        validate.validate(cfg)
    except PlatformError as exc:
        assert_clean(exc)
        return
    # Accepted: the overlay renders, and no environment value is in it.
    text = compose.custom_overlay(cfg, topology.custom_services(cfg)) or ""
    overlay = yaml.safe_load(text) if text else {"services": {}}
    for svc in topology.custom_services(cfg):
        assert svc.name in overlay["services"]


@cases(200)
@given(value=st.text(max_size=40))
def test_environment_values_reach_dotenv_exactly_or_are_refused(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    doc = {"gpu": "off", "services": {"custom": {"svc": {"image": "x:1", "environment": {"V": value}}}}}
    path = write_project(tmp_path, yaml.safe_dump(doc, allow_unicode=True), {**SECRETS, "X": "from-dotenv"})
    try:
        cfg = config.load(path, environ={})
        validate.validate(cfg)
    except PlatformError as exc:
        assert_clean(exc)
        return
    raw = cfg.get("services", "custom", "svc", "environment", "V")  # as YAML read it back
    want = "".join("from-dotenv" if kind == "ref" else text for kind, text in config.split_references(raw))
    env = compose.compose_env(cfg, NO_GPU)
    assert env["CSLR_CUSTOM_SVC__V"] == want
    assert config.parse_dotenv(config.format_dotenv({"K": want}), ".env")["K"][0] == want


# ------------------------------------------------------------------------- generation


def test_the_overlay_is_hardened_like_compose_yaml_and_holds_no_value(project):
    cfg = loaded(project, GOOD, ENV).cfg
    plan = compose.plan(cfg, NO_GPU)
    assert compose.BUILD_DIR / compose.CUSTOM_OVERLAY in plan.files
    text = plan.generated[compose.CUSTOM_OVERLAY]
    assert "api-key-from-dotenv" not in text and "costs" not in text
    doc = yaml.safe_load(text)["services"]
    base = yaml.safe_load((ROOT / "compose" / "compose.yaml").read_text())
    for name in ("my_service", "quiet"):
        svc = doc[name]
        for key, value in {**base["x-hardening"], **base["x-restart"]}.items():
            assert svc[key] == value, (name, key)
        assert svc["mem_limit"] == 512 * 1024**2
    mine = doc["my_service"]
    assert mine["ports"] == ["${CSLR_BIND_ADDRESS:-127.0.0.1}:9000:9000"]
    assert mine["networks"] == {"ray-network": {"ipv4_address": "172.28.0.100"}}
    assert mine["environment"]["API_KEY"] == "${CSLR_CUSTOM_MY_SERVICE__API_KEY}"
    assert "http://127.0.0.1:9000/health" in mine["healthcheck"]["test"][1]
    assert "ports" not in doc["quiet"] and "healthcheck" not in doc["quiet"]
    assert plan.env["CSLR_CUSTOM_MY_SERVICE__API_KEY"] == "api-key-from-dotenv"
    assert plan.env["CSLR_CUSTOM_MY_SERVICE__GREETING"] == "costs $5" and plan.env["CSLR_CUSTOM_MY_SERVICE__COUNT"] == "3"
    telemetry = yaml.safe_load(plan.generated[compose.TELEMETRY_OVERLAY])["services"]
    assert "my_service" in telemetry and "quiet" in telemetry


def test_custom_variables_from_the_shell_never_override_the_generated_ones(monkeypatch):
    assert "CSLR_CUSTOM_SVC__X" not in compose.subprocess_env({"CSLR_CUSTOM_SVC__X": "shell", "PATH": "/bin"})


def test_no_custom_services_no_overlay(project):
    plan = compose.plan(loaded(project, "gpu: off\n").cfg, NO_GPU)
    assert compose.CUSTOM_OVERLAY not in plan.generated
    assert not any(k.startswith(compose.CUSTOM_PREFIX) for k in plan.env)


def test_a_switched_off_custom_service_is_left_out(project):
    cfg = loaded(project, "services:\n  custom:\n    a: {image: 'x:1', enabled: false, port: 6381}\n").cfg  # its port collides with nothing
    assert topology.custom_services(cfg) == [] and compose.CUSTOM_OVERLAY not in compose.plan(cfg, NO_GPU).generated


# ------------------------------------------------------------------------- listings, firewall


def test_ps_urls_and_status_lines(project):
    cfg = loaded(project, textwrap.dedent(GOOD) + "network: {bind_address: 0.0.0.0}\n", ENV).cfg
    urls = report.service_urls(cfg)
    assert urls["my_service"].startswith("127.0.0.1:9000 ") and "my_service:9000" in urls["my_service"]
    assert urls["quiet"] == "(custom; in the stack only: quiet)"
    rows = {"my_service": {"Service": "my_service", "State": "running", "Health": "healthy"}, "quiet": {"Service": "quiet", "State": "exited"}}
    states = report.custom_states(cfg, rows)
    assert states == {"my_service": "healthy", "quiet": "NOT running (exited)"}
    text = report.format_status({"ray_nodes": [], "head": None, "mlflow": None, "redis": None, "custom": states})
    assert "custom my_service: healthy" in text and "custom quiet: NOT running (exited)" in text
    assert "my_service" in report.table(rows.values(), cfg)


MULTI = """
    network: {bind_address: 0.0.0.0}
    hosts:
      - {name: host-a, address: 10.0.0.1}
      - {name: host-b, address: 10.0.0.2}
    nodes: {head_whitelist: [ray-cpu-host-a]}
    services:
      custom:
        api: {image: "x:1", port: 9100}
"""


def test_the_firewall_covers_a_custom_port_on_the_host_that_runs_it(project):
    cfg = loaded(project, MULTI).cfg
    first = multihost.firewall_plan(cfg, "host-a").published
    second = multihost.firewall_plan(cfg, "host-b").published
    assert ("services.custom.api.port", 9100) in first
    assert not any(path.startswith("services.custom") for path, _ in second)
    assert "--ctorigdstport 9100" in "\n".join(multihost.firewall_ruleset(cfg, "host-a"))
    plan_b = compose.plan(cfg, NO_GPU, host="host-b")
    assert compose.CUSTOM_OVERLAY not in plan_b.generated
    assert compose.CUSTOM_OVERLAY in compose.plan(cfg, NO_GPU, host="host-a").generated


def test_multi_host_refuses_a_custom_port_a_service_has(project):
    lines = refusal(project, MULTI.replace("port: 9100", "port: 5000"))
    assert "already used by services.mlflow.port" in one(lines, "$.services.custom.api.port:")


class FakeDocker:
    def __init__(self, present=(), pull_rc=0):
        self.present_refs, self.pull_rc, self.pulled = set(present), pull_rc, []

    def present(self, ref):
        return ref in self.present_refs

    def pull(self, ref, quiet=False):
        self.pulled.append(ref)
        return subprocess.CompletedProcess(["docker", "pull", ref], self.pull_rc)


class FakeStack:
    def __init__(self, cfg, source):
        self.cfg, self.source, self.lines = cfg, source, []

    def env(self):
        return {"CSLR_IMAGE_SOURCE": self.source}

    def doc(self):
        return {"services": {s.name: {} for s in topology.custom_services(self.cfg)}}

    def out(self, line):
        self.lines.append(line)


def test_up_pulls_a_missing_custom_image_or_says_that_local_pulls_nothing(project):
    from cslr import lifecycle

    cfg = loaded(project, GOOD, ENV).cfg
    present = "registry.lab.example:5000/tools/worker@sha256:" + "0123456789abcdef" * 4
    docker = FakeDocker(present=[present])
    assert lifecycle.custom_image_findings(FakeStack(cfg, "pull"), docker) == []
    assert docker.pulled == ["my-org/my-service:latest"]
    failed = lifecycle.custom_image_findings(FakeStack(cfg, "pull"), FakeDocker(present=[present], pull_rc=1))
    assert failed == [
        "services.custom.my_service.image my-org/my-service:latest: `docker pull` failed (exit 1); check the name, or build or load the image first"
    ]
    docker = FakeDocker(present=[present])
    local = lifecycle.custom_image_findings(FakeStack(cfg, "local"), docker)
    assert docker.pulled == [] and "images.source local pulls nothing" in local[0] and len(local) == 1
