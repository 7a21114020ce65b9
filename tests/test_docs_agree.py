"""Issue 19's contradictions between the docs and the code stay fixed."""

from __future__ import annotations

import re

from cslr import config, k8s
from tests.conftest import ROOT


def _description(*path: str) -> str:
    node = config.schema()
    for part in path:
        node = node["properties"][part]
    return node["description"]


def test_head_address_text_names_no_removed_setting():
    text = _description("nodes", "head_address")
    removed = {".".join(p) for p in config.REMOVED}
    assert not [r for r in removed if f"`{r}`" in text]


def test_the_marimo_volume_size_names_the_claim_the_export_writes(project):
    text = _description("kubernetes", "volumes", "marimo")
    named = re.search(r"\(`([a-z0-9-]+)`\)", text).group(1)
    cfg = config.load(project("kubernetes:\n  registry: registry.example.org/lab\n"), environ={})
    objects = k8s.manifests(cfg)[0]["marimo.yaml"]
    claims = [o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert named in claims


def test_kubernetes_md_does_not_say_marimo_runs_as_root():
    assert "Marimo runs as root" not in (ROOT / "docs" / "kubernetes.md").read_text()
    assert "runAsUser: 1000" in (ROOT / "tests/golden/k8s/cpu-only/marimo.yaml").read_text()


def test_down_volumes_help_does_not_claim_to_delete_the_notebooks():
    import tasks

    text = tasks.down.help["volumes"]
    assert "notebooks" not in text.split(";")[0] or "stay" in text


def test_the_multi_host_walk_through_creates_the_venv_before_using_it():
    text = (ROOT / "docs" / "multi-host.md").read_text()
    walk = text.split("## Set-up on two real hosts", 1)[1]
    assert walk.index("make venv") < walk.index(".venv/bin/inv")


def test_no_document_cites_a_design_document_outside_the_repository():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "scripts").glob("*.py")), *sorted((ROOT / "cslr").glob("*.py"))]
    for path in files:
        assert "design document" not in path.read_text(), path.name
