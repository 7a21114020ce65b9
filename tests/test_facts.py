"""Each fact lives in one place (docs/architecture.md, "Where each fact lives"). Where a copy must
stay (a Compose file's `${VAR:-default}`, a stdlib script mounted into containers), a test here
fails when it drifts from the one place; elsewhere the literal must not come back."""

from __future__ import annotations

import re

import pytest
import yaml

from cslr import compose, config, images, k8s, multihost, topology
from cslr.gpu import GpuState
from cslr.init import DATA_VOLUMES, SECRET_ENV
from tests._scripts import load_script
from tests.conftest import ROOT
from tests.test_one_setting import _TagTolerantLoader

COMPOSE_FILES = [ROOT / "compose" / "compose.yaml", *sorted((ROOT / "overlays").glob("*.yaml"))]
DEFAULT = re.compile(r"\$\{([A-Z0-9_]+):-([^}]*)\}")


def _defaults_in(path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, value in DEFAULT.findall(path.read_text()):
        found.setdefault(name, set()).add(value)
    return found


def test_the_agent_port_offset_of_the_scripts_is_multihosts():
    """scripts/ are stdlib-only and mounted into containers: tied by this test, not an import."""
    assert load_script("cslr_control").AGENT_PORT_OFFSET == multihost.AGENT_OFFSET


@pytest.mark.parametrize("kind", multihost.KINDS)
def test_the_multi_host_overlays_pinned_port_defaults_are_multihost_pinned(kind):
    """The overlays' defaults never take effect (host_env sets every variable) but must not lie."""
    path = ROOT / "overlays" / ("multihost.yaml" if kind == "cpu" else "multihost-gpu.yaml")
    found = _defaults_in(path)
    K = kind.upper()
    for key, port in multihost.PINNED[kind].items():
        assert found.get(f"RAY_{K}_{key.upper()}_PORT") == {str(port)}, key
    gcs = config.defaults()["ray"][kind]["ports"]["gcs"]
    assert found.get(f"RAY_{K}_AGENT_PORT") == {str(gcs + multihost.AGENT_OFFSET)}


def test_the_multi_host_overlays_set_every_pinned_port_host_env_writes(project):
    """What host_env writes and what the overlays interpolate are the same names."""
    names = set()
    for path in (ROOT / "overlays" / "multihost.yaml", ROOT / "overlays" / "multihost-gpu.yaml"):
        names |= set(_defaults_in(path))
    for kind in multihost.KINDS:
        for key in multihost.PINNED[kind]:
            assert f"RAY_{kind.upper()}_{key.upper()}_PORT" in names


def _image_default(var: str, defaults: dict) -> str:
    project = {image.env: image for image in images.PROJECT_IMAGES}
    if var in project:
        repo = project[var].repo
        version = {
            "cslr/ray": defaults["ray"]["version"],
            "cslr/ray-gpu": defaults["ray"]["version"],
            "cslr/mlflow": images.mlflow_version(defaults["images"]["mlflow_base"]),
            "cslr/marimo": images._pinned(ROOT / "compose/marimo/requirements.txt", "marimo"),
        }[repo]
        return f"{repo}:{version}"
    if var in images.BASE_KEYS:
        return defaults["images"][images.BASE_KEYS[var]]
    # A pull-only image (Grafana) has no local stand-in: only its setting's x-env names it.
    (key,) = [k for k, spec in config.schema()["properties"]["images"]["properties"].items() if spec.get("x-env") == var]
    return defaults["images"][key]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_image_tags_copied_into_compose_files_are_the_models(path):
    """`image: ${VAR:-tag}`: the fallback tag is the schema default (bases) or the project image's
    repo and version (cslr/images.py), without the content hash that `inv generate` adds."""
    doc = yaml.load(path.read_text(), Loader=_TagTolerantLoader) or {}
    d = config.defaults()
    for name, svc in (doc.get("services") or {}).items():
        image = (svc or {}).get("image")
        if not isinstance(image, str):
            continue
        m = DEFAULT.fullmatch(image)
        assert m, f"{path.name}: {name}'s image {image!r} is not a ${{VAR:-default}} the model writes"
        assert m.group(2) == _image_default(m.group(1), d), (path.name, name)


def test_secret_names_come_from_the_schema():
    fields = [f for f in config.env_fields() if f.secret]
    assert SECRET_ENV == tuple(f.env for f in fields) == topology.secret_env()
    assert all(f.path[0] == "secrets" for f in fields)
    assert set(DATA_VOLUMES.values()) <= set(SECRET_ENV)
    assert {name for name, key in k8s.SECRET_ENV.items() if name == key} >= set(SECRET_ENV)


def test_addresses_are_built_by_the_model(project):
    cfg = config.load(project("{}\n"), environ={})
    env = compose.compose_env(cfg, GpuState("off"))
    assert env["RAY_ADDRESS"] == topology.ray_address(cfg) == "ray://health:10001"
    assert env["REDIS_URL"] == topology.redis_url(cfg.get("secrets", "redis_password"), "redis:6379")
    assert f"@postgres:{topology.POSTGRES_PORT}/" in env["MLFLOW_BACKEND_STORE_URI"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_one_head_host_parsing_for_single_and_multi_host(project):
    cfg = config.load(project("nodes:\n  head_address: head.lab:6379\n"), environ={})
    assert topology.ray_address(cfg) == "ray://head.lab:10001"
    assert topology.ray_address(cfg, client_port=10011) == "ray://head.lab:10011"


@pytest.mark.parametrize(
    ("bind", "host"),
    [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("::", "127.0.0.1"), ("192.0.2.7", "192.0.2.7"), ("::1", "[::1]"), ("fd00::5", "[fd00::5]")],
)
def test_reachable_host_of_the_bind_address(bind, host):
    assert topology.reachable_host(bind) == host


def test_redis_url_quotes_the_password_and_is_empty_without_redis():
    assert topology.redis_url("a/b@c", "redis:6379") == "redis://:a%2Fb%40c@redis:6379/0"
    assert topology.redis_url("x", "") == ""


# Literals that moved into cslr/topology.py: they must not come back in the modules that now read it.
MOVED = {
    r"\b5432\b": ("compose.py", "k8s.py"),
    r"redis:6379": ("compose.py", "multihost.py"),
    r"ray://health": ("compose.py", "multihost.py", "k8s.py"),
    r'"0\.0\.0\.0", "::"|"0\.0\.0\.0", "127\.0\.0\.1"': ("report.py", "jobs.py", "multihost.py", "doctor.py"),
    r"redis://:": ("compose.py", "multihost.py", "k8s.py"),
    r'"POSTGRES_PASSWORD", "REDIS_PASSWORD"': ("init.py", "validate.py", "k8s.py"),
    r'\("redis", "mlflow", "marimo"\)': ("multihost.py", "k8s.py", "compose.py"),
}


@pytest.mark.parametrize("pattern", MOVED, ids=list(MOVED))
def test_moved_literals_do_not_come_back(pattern):
    for name in MOVED[pattern]:
        text = (ROOT / "cslr" / name).read_text()
        assert not re.search(pattern, text), f"cslr/{name} writes {pattern!r} again: read it from cslr/topology.py"
