"""Contract: the generated data-mounts overlay is a project the real Compose v2 accepts; every Ray
node and the notebook see each data set read-only at /data/NAME and the workspace writable, and
an odd host path (spaces, quotes, a dollar) reaches Compose unchanged."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest
import yaml

from cslr import compose, config
from cslr.gpu import Gpu, GpuState

pytestmark = pytest.mark.contract

ONE_GPU = GpuState("auto", (Gpu(0, "NVIDIA L4", "23034 MiB"),))


def test_data_and_workspace_mounts_in_nodes_and_notebook(project, tmp_path):
    data = tmp_path / "sign data $HOME 'x'"
    data.mkdir()
    (tmp_path / "out").mkdir()
    cfg = config.load(project(f"data:\n  phoenix: {json.dumps(str(data))}\nworkspace: {tmp_path / 'out'}\n"), environ={})
    plan = compose.plan(cfg, ONE_GPU, test_cluster=True)
    _, merged = compose.render(plan, tmp_path / "_build")
    doc = yaml.safe_load(merged)
    spec = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    jsonschema.validate(doc, spec)
    for service in ("ray-cpu", "ray-gpu", "marimo"):
        vols = {v["target"]: v for v in doc["services"][service]["volumes"]}
        # `compose config` writes a project Compose reads again: the dollar stays escaped as `$$`.
        assert vols["/data/phoenix"]["source"] == str(data).replace("$", "$$") and vols["/data/phoenix"]["read_only"] is True
        assert not (vols["/data/phoenix"].get("bind") or {}).get("create_host_path")  # a missing folder is an error, not created
        assert vols["/workspace"]["source"] == str(tmp_path / "out") and not vols["/workspace"].get("read_only")
    assert not any(v["target"].startswith("/data") for v in doc["services"]["health"].get("volumes", []))


def test_multihost_gets_the_same_mounts(project, tmp_path):
    from tests.conftest import ROOT

    (tmp_path / "d").mkdir()
    text = (ROOT / "tests" / "contract" / "multihost-config.yaml").read_text() + f"\ndata:\n  d: {tmp_path / 'd'}\n"
    cfg = config.load(project(text), environ={})
    name = cfg.get("hosts")[0]["name"]
    plan = compose.plan(cfg, GpuState("off"), test_cluster=False, host=name)
    assert "data-mounts.yaml" in plan.generated
    _, merged = compose.render(plan, tmp_path / "_build")
    doc = yaml.safe_load(merged)
    assert {v["target"] for v in doc["services"]["ray-cpu"]["volumes"]} >= {"/data/d"}


def test_nodes_and_notebook_run_as_the_user_of_the_generated_env(project, tmp_path, monkeypatch):
    # CSLR_UID / CSLR_GID (what `inv generate` records) reach the real Compose: the notebook's
    # `user`, and the ids every Ray node drops to after preparing /tmp/ray as root.
    monkeypatch.setenv("CSLR_UID", "4321")
    monkeypatch.setenv("CSLR_GID", "8765")
    plan = compose.plan(config.load(project("{}\n"), environ={}), ONE_GPU, test_cluster=True)
    env_text, merged = compose.render(plan, tmp_path / "_build")
    assert "CSLR_UID=4321" in env_text and "CSLR_GID=8765" in env_text
    services = yaml.safe_load(merged)["services"]
    assert services["marimo"]["user"] == "4321:8765"
    assert services["marimo"]["environment"]["HOME"] == "/tmp/cslr-home"
    for node in ("ray-cpu", "ray-gpu"):
        svc = services[node]
        assert svc["user"] == "0:0" and 'setpriv --reuid="$$CSLR_UID" --regid="$$CSLR_GID"' in svc["command"][-1]
        assert (svc["environment"]["CSLR_UID"], svc["environment"]["CSLR_GID"]) == ("4321", "8765")
    assert services["test-cluster"]["user"] == "0:0"  # touches no host folder
