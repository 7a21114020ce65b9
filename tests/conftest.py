"""Shared fixtures: a scratch project directory with a config.yaml and a .env of secrets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret",
    "REDIS_PASSWORD": "redis-secret",
    "MARIMO_TOKEN": "marimo-secret",
    "RAY_AUTH_TOKEN": "ray-secret",
    "CSLR_CONTROL_SECRET": "control-secret-0123456789",
}


def write_project(tmp: Path, config_text: str = "{}\n", env: dict | None = None) -> Path:
    """Write config.yaml (+ .env with every secret unless `env` says otherwise); return config path."""
    cfg = tmp / "config.yaml"
    cfg.write_text(textwrap.dedent(config_text))
    values = dict(SECRETS) if env is None else env
    (tmp / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return cfg


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Factory: project(config_text, env=None) -> path of config.yaml.

    Works from inside the scratch directory, as a user runs `inv` beside config.yaml, so
    messages name `config.yaml` and `.env` as the user would.
    """
    monkeypatch.chdir(tmp_path)

    def make(config_text: str = "{}\n", env: dict | None = None) -> Path:
        return write_project(tmp_path, config_text, env)

    return make
