"""`inv init`: secrets generated once, mode 0600, never overwritten without --force."""

from __future__ import annotations

import stat

import pytest

from cslr import config
from cslr.errors import PlatformError
from cslr.init import SECRET_ENV, init


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_config_and_private_env(tmp_path):
    done = init(tmp_path / "config.yaml", tmp_path / ".env")
    env = config.parse_dotenv((tmp_path / ".env").read_text(), ".env")
    assert set(SECRET_ENV) <= set(env)
    assert all(len(env[k][0]) >= 40 for k in SECRET_ENV)
    assert len({env[k][0] for k in SECRET_ENV}) == len(SECRET_ENV)
    assert mode(tmp_path / ".env") == 0o600
    assert (tmp_path / "config.yaml").read_text().startswith("# yaml-language-server: $schema=")
    assert any("wrote" in line for line in done)


def test_init_keeps_existing_files(tmp_path):
    init(tmp_path / "config.yaml", tmp_path / ".env")
    (tmp_path / "config.yaml").write_text("gpu: off\n")
    before = (tmp_path / ".env").read_text()
    init(tmp_path / "config.yaml", tmp_path / ".env")
    assert (tmp_path / ".env").read_text() == before
    assert (tmp_path / "config.yaml").read_text() == "gpu: off\n"


def test_force_regenerates(tmp_path):
    init(tmp_path / "config.yaml", tmp_path / ".env")
    before = (tmp_path / ".env").read_text()
    init(tmp_path / "config.yaml", tmp_path / ".env", force=True)
    assert (tmp_path / ".env").read_text() != before


def test_existing_env_without_secrets_is_refused_not_clobbered(tmp_path):
    (tmp_path / ".env").write_text("CSLR_GPU=off\n")
    with pytest.raises(PlatformError, match="lacks POSTGRES_PASSWORD"):
        init(tmp_path / "config.yaml", tmp_path / ".env")
    assert (tmp_path / ".env").read_text() == "CSLR_GPU=off\n"


def test_generated_config_validates_with_generated_env(tmp_path, monkeypatch):
    from cslr import validate

    monkeypatch.chdir(tmp_path)
    init(tmp_path / "config.yaml", tmp_path / ".env")
    cfg = config.load(tmp_path / "config.yaml", environ={})
    assert [p for p in validate.validate(cfg) if p.severity == "error"] == []
