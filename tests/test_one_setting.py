"""Each setting exists once, and its default lives only in the schema.

- removed duplicates (`ray.head_port`, `ray.dashboard_port`, `ray.client_port` and their
  variables) are migration errors naming the setting that replaced them;
- the shipped config.yaml, the compose `${VAR:-default}` defaults and the docs agree with the
  schema's defaults; the container-internal ports in the compose files agree with
  `compose.CONTAINER_PORTS`;
- docs/multi-host.md, followed literally on the shipped config.yaml, validates;
- a head whitelist that can never produce a head is an error.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from cslr import compose, config, multihost, validate
from cslr.errors import ConfigError
from tests.conftest import ROOT, write_project

SHIPPED_TEXT = (ROOT / "config.yaml").read_text()
COMPOSE_FILES = [ROOT / "compose" / "compose.yaml", *sorted((ROOT / "overlays").glob("*.yaml"))]


def problems(path, environ=None, gpu_node=False):
    try:
        return validate.validate(config.load(path, environ=environ or {}), gpu_node=gpu_node)
    except ConfigError as exc:
        return exc.problems


def errors(*args, **kw):
    return [str(p) for p in problems(*args, **kw) if p.severity == "error"]


# ------------------------------------------------------------------------------ removed duplicates


@pytest.mark.parametrize(
    "key, new",
    [
        ("head_port", "ray.cpu.ports.gcs (RAY_CPU_GCS_HOST_PORT)"),
        ("dashboard_port", "ray.cpu.ports.dashboard (RAY_CPU_DASHBOARD_HOST_PORT)"),
        ("client_port", "services.health.ray_client_port (RAY_CLIENT_HOST_PORT)"),
    ],
)
def test_removed_key_is_a_migration_error_naming_the_new_one(project, key, new):
    out = errors(project(f"ray:\n  version: 2.60.0\n  {key}: 7000\n"))
    assert len(out) == 1, out  # the migration error only: not also "unknown key"
    assert out[0].startswith(f"config.yaml:3:3: $.ray.{key}: found a removed setting; ") and new in out[0]


@pytest.mark.parametrize(
    "env, new",
    [("RAY_HEAD_PORT", "RAY_CPU_GCS_HOST_PORT"), ("RAY_DASHBOARD_PORT", "RAY_CPU_DASHBOARD_HOST_PORT"), ("RAY_CLIENT_SERVER_PORT", "RAY_CLIENT_HOST_PORT")],
)
def test_removed_variable_in_dotenv_is_an_error_and_in_the_environment_a_warning(project, env, new):
    from tests.conftest import SECRETS

    path = project("{}\n", env={**SECRETS, env: "7000"})
    out = errors(path)
    assert len(out) == 1 and out[0].startswith(f".env:{len(SECRETS) + 1}:1: $.ray.") and f"({env}): found a removed setting; " in out[0] and new in out[0]
    path = project("{}\n")
    found = problems(path, environ={env: "7000"})
    assert [p.severity for p in found] == ["warning"] and "is no longer a setting and is ignored" in str(found[0])
    assert str(found[0]).startswith(f"environment ${env}: ")


def test_head_port_in_dotenv_no_longer_splits_target_and_published(project):
    # Issue 9: RAY_HEAD_PORT=7000 gave `target: 7000, published: "6379"`. Now the one setting
    # moves both: the published port, and (multi-host) the node's own port.
    cfg = config.load(project("{}\n", env={"RAY_CPU_GCS_HOST_PORT": "7000"}), environ={})
    env = compose.compose_env(cfg, compose.GpuState("off"))
    assert env["RAY_CPU_GCS_HOST_PORT"] == "7000" and "RAY_HEAD_PORT" not in env


# ------------------------------------------------------------------------------ defaults live in the schema


def _leaves(data, path=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path, data


def test_shipped_config_states_the_schema_defaults():
    shipped = yaml.safe_load(SHIPPED_TEXT)
    defaults = config.defaults()
    differ = []
    for path, value in _leaves(shipped):
        node = defaults
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if value != node:
            differ.append((".".join(path), value, node))
    assert differ == []


def _schema_default_text(env_name: str, rendered: dict) -> str:
    """What `inv generate` writes for `env_name` on an empty config (a size as written in the
    schema: Compose takes `2.5g` as well as bytes)."""
    fld = next(f for f in config.env_fields() if f.env == env_name)
    if not fld.size:
        return rendered[env_name]
    node = config.defaults()
    for part in fld.path:
        node = node.get(part) if isinstance(node, dict) else None
    return compose._render(node)


class _TagTolerantLoader(yaml.SafeLoader):
    """Reads Compose's `!override` / `!reset` as the plain value beneath the tag."""


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else None)


def test_compose_defaults_agree_with_the_schema(project):
    cfg = config.load(project("{}\n", env={}), environ={})
    rendered = compose.compose_env(cfg, compose.GpuState("off"))
    names = {f.env for f in config.env_fields()}
    seen, differ = 0, []
    for file in COMPOSE_FILES:
        for var, default in re.findall(r"\$\{([A-Z0-9_]+):-([^}]*)\}", file.read_text()):
            if var in names:
                seen += 1
                if default != _schema_default_text(var, rendered):
                    differ.append((file.name, var, default, _schema_default_text(var, rendered)))
    assert differ == [] and seen > 40


def test_removed_variables_are_not_interpolated_by_compose():
    for file in COMPOSE_FILES:
        text = file.read_text()
        for env, _ in config.REMOVED.values():
            assert not re.search(r"\$\{" + env + r"(?![A-Z0-9_])", text), (file.name, env)


def test_container_ports_in_compose_agree_with_compose_container_ports():
    doc = yaml.safe_load((ROOT / "compose" / "compose.yaml").read_text())
    ports = compose.CONTAINER_PORTS
    env = doc["x-ray-env"]
    assert (env["RAY_HEAD_PORT"], env["RAY_DASHBOARD_PORT"], env["RAY_CLIENT_SERVER_PORT"]) == (
        str(ports["gcs"]),
        str(ports["dashboard"]),
        str(ports["client"]),
    )
    targets = [p.rsplit(":", 1)[1] for p in doc["services"]["ray-cpu"]["ports"]]
    assert targets == [str(ports["gcs"]), str(ports["dashboard"])]
    gpu = yaml.load((ROOT / "overlays" / "gpu.yaml").read_text(), Loader=_TagTolerantLoader)
    assert [p.rsplit(":", 1)[1] for p in gpu["services"]["ray-gpu"]["ports"]] == targets


def test_multi_host_doc_port_table_agrees_with_the_schema():
    text = (ROOT / "docs" / "multi-host.md").read_text()
    d = config.defaults()
    for kind in ("cpu", "gpu"):
        for key in ("gcs", "client"):
            assert f"`ray.{kind}.ports.{key}` {d['ray'][kind]['ports'][key]}" in text
    row = next(line for line in text.splitlines() if line.startswith("| dashboard"))
    assert row.endswith(f"| {d['ray']['cpu']['ports']['dashboard']} | {d['ray']['gpu']['ports']['dashboard']} |")
    row = next(line for line in text.splitlines() if line.startswith("| election agent"))
    assert row.endswith(f"| {d['ray']['cpu']['ports']['gcs'] + multihost.AGENT_OFFSET} | {d['ray']['gpu']['ports']['gcs'] + multihost.AGENT_OFFSET} |")
    s = d["services"]
    assert f"health {s['health']['port']} and its Ray client proxy {s['health']['ray_client_port']}" in text
    assert f"Redis {s['redis']['port']},\nMLflow {s['mlflow']['port']}, Marimo {s['marimo']['port']}" in text


# ------------------------------------------------------------------------------ docs/multi-host.md, literally


def _doc_config_block() -> dict:
    text = (ROOT / "docs" / "multi-host.md").read_text()
    section = text.split("## Configuration", 1)[1]
    return yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0])


def _merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for key, value in over.items():
            out[key] = _merge(base.get(key), value)
        return out
    return copy.deepcopy(over)


def multi_host_project(tmp_path):
    """The shipped config.yaml with the doc's block applied, as a user following it would."""
    doc = _merge(yaml.safe_load(SHIPPED_TEXT), _doc_config_block())
    return write_project(tmp_path, yaml.safe_dump(doc, sort_keys=False))


def test_multi_host_doc_followed_literally_on_the_shipped_config_validates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = multi_host_project(tmp_path)
    assert errors(path) == []
    cfg = config.load(path, environ={})
    assert ",".join(multihost.whitelist(cfg)) == "ray-cpu-host-a:6379,ray-gpu-host-a:6380"  # as the doc says
    rules = multihost.firewall_rules(cfg, "host-a")
    assert "\n-A CSLR-FW-INPUT -p tcp -s 192.168.1.11 -m multiport --dports 6379,7379,10011," in rules
    assert "\n-A CSLR-FW -s 192.168.1.11 -j RETURN\n" in rules


def test_the_old_shipped_client_ports_clash_as_issue_9_found(tmp_path, monkeypatch):
    # The shipped file used to say ports.client 10001/10002; 10001 is the health proxy's port.
    monkeypatch.chdir(tmp_path)
    doc = _merge(yaml.safe_load(SHIPPED_TEXT), _doc_config_block())
    doc["ray"]["cpu"]["ports"]["client"] = 10001
    path = write_project(tmp_path, yaml.safe_dump(doc, sort_keys=False))
    assert any("$.ray.cpu.ports.client" in e and "already used by services.health.ray_client_port" in e for e in errors(path))


# ------------------------------------------------------------------------------ cross-rule: a head must be possible


def test_whitelist_of_only_the_gpu_node_with_gpu_off_is_an_error(project):
    out = errors(project("nodes:\n  head_whitelist: [ray-gpu]\n"), gpu_node=False)
    assert out == [
        "config.yaml:2:19: $.nodes.head_whitelist (HEAD_WHITELIST): found ['ray-gpu']: no node of this stack can ever become head "
        "(ray-gpu runs only with the GPU node, which is off); expected at least one of: ray-cpu (or nodes.head_address to join an external head)"
    ]


def test_whitelist_of_only_the_gpu_node_with_gpu_on_is_fine(project):
    assert errors(project("nodes:\n  head_whitelist: [ray-gpu]\n"), gpu_node=True) == []


def test_whitelist_of_strangers_is_an_error_unless_an_external_head_is_named(project):
    assert any("no node of this stack can ever become head" in e for e in errors(project("nodes:\n  head_whitelist: [elsewhere]\n")))
    assert errors(project("nodes:\n  head_whitelist: [elsewhere]\n  head_address: elsewhere:6379\n")) == []
