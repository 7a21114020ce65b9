"""`inv config`: the effective value of every setting and its origin; secrets never shown."""

from __future__ import annotations

import subprocess

from cslr import config, effective
from tests.conftest import ROOT, SECRETS


def by_setting(cfg) -> dict:
    return {r.setting: r for r in effective.rows(cfg)}


def test_every_origin_is_named(project):
    path = project("gpu: off\nray:\n  cpu:\n    ports: {gcs: 7000}\n", env={**SECRETS, "REDIS_HOST_PORT": "7381"})
    rows = by_setting(config.load(path, environ={"MLFLOW_HOST_PORT": "7500"}))
    assert rows["$.gpu (CSLR_GPU)"] == effective.Row("$.gpu (CSLR_GPU)", "off", "config.yaml:1")
    assert rows["$.ray.cpu.ports.gcs (RAY_CPU_GCS_HOST_PORT)"].origin == "config.yaml:4"
    assert (rows["$.services.redis.port (REDIS_HOST_PORT)"].value, rows["$.services.redis.port (REDIS_HOST_PORT)"].origin) == (
        "7381",
        f".env:{len(SECRETS) + 1}",
    )  # the line after the secrets
    assert (rows["$.services.mlflow.port (MLFLOW_HOST_PORT)"].value, rows["$.services.mlflow.port (MLFLOW_HOST_PORT)"].origin) == (
        "7500",
        "environment $MLFLOW_HOST_PORT",
    )
    assert rows["$.services.health.port (HEALTH_HOST_PORT)"] == effective.Row("$.services.health.port (HEALTH_HOST_PORT)", "8888", "schema default")


def test_every_schema_setting_has_a_row(project):
    rows = by_setting(config.load(project(), environ={}))
    for fld in config.env_fields():
        assert any(name.endswith(f"({fld.env})") for name in rows), fld.env


def test_secrets_are_masked(project):
    rows = effective.rows(config.load(project(), environ={}))
    text = effective.table(rows)
    assert all(secret not in text for secret in SECRETS.values())
    assert by_setting(config.load(project(), environ={}))["$.secrets.redis_password (REDIS_PASSWORD)"].value == "****** (set, not shown)"


def test_list_rows_and_host_rows(project):
    rows = by_setting(config.load(project("hosts: [{name: a, address: 10.0.0.1}]\n"), environ={"HEAD_WHITELIST": "x,y"}))
    assert rows["$.nodes.head_whitelist (HEAD_WHITELIST)"].value == "[x, y]"
    assert rows["$.hosts[0].address"] == effective.Row("$.hosts[0].address", "10.0.0.1", "config.yaml:1")


def test_inv_config_from_another_folder_finds_the_project_config(tmp_path):
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "inv"), "--search-root", str(ROOT), "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        # The secrets from the environment (a fresh clone has no .env): a valid config exits 0.
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **SECRETS},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["SETTING", "VALUE", "ORIGIN"]
    gpu_line = next(i for i, line in enumerate((ROOT / "config.yaml").read_text().splitlines(), 1) if line.startswith("gpu:"))
    assert any(line.startswith("$.gpu (CSLR_GPU)") and line.endswith(f"{ROOT}/config.yaml:{gpu_line}") for line in lines), out.stdout


def test_invalid_values_and_unknown_keys_are_marked_not_shown_as_effective(project):
    # Issue 19: `inv config` showed `port: "five"` as effective and an unknown key as a plain setting.
    from cslr.errors import ConfigError
    from cslr.project import load_validated

    path = project('services:\n  mlflow: {port: "five"}\n  bogus: 1\n')
    try:
        load_validated(path)
        problems = []
    except ConfigError as exc:
        problems = exc.problems
    rows = {r.setting: r for r in effective.rows(config.load(path, environ={}), problems)}
    assert rows["$.services.mlflow.port (MLFLOW_HOST_PORT)"].note.startswith("invalid: found 'five'")
    assert rows["$.services.bogus"].note == "unknown key"
    assert rows["$.services.redis.port (REDIS_HOST_PORT)"].note == ""
    text = effective.table(list(rows.values()))
    assert "PROBLEM" in text.splitlines()[0]
    assert effective.as_json([rows["$.services.bogus"]]) == [{"setting": "$.services.bogus", "value": "1", "origin": "config.yaml:3", "problem": "unknown key"}]
