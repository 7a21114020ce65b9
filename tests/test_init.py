"""`inv init`: secrets generated once, mode 0600; nothing is lost: backups, kept lines, explicit rotation."""

from __future__ import annotations

import stat
import subprocess

import pytest

from cslr import config
from cslr.errors import PlatformError
from cslr.init import ENV_BACKUPS, SECRET_ENV, backup, init


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


class Docker:
    """Stands in for the `docker` CLI's `docker volume inspect NAME`: `volumes` exist, others do not.

    The real command answers exit 0 with JSON for an existing volume, exit 1 with "no such volume"
    for a missing one, and exit 1 with another message when the engine does not answer.
    """

    def __init__(self, volumes=(), stderr=None):
        self.volumes, self.stderr, self.calls = set(volumes), stderr, []

    def __call__(self, argv, **kw):
        self.calls.append(argv)
        assert argv[:3] == ["docker", "volume", "inspect"]
        if self.stderr:
            return subprocess.CompletedProcess(argv, 1, "", self.stderr)
        if argv[3] in self.volumes:
            return subprocess.CompletedProcess(argv, 0, "[{}]", "")
        return subprocess.CompletedProcess(argv, 1, "[]", f"Error response from daemon: get {argv[3]}: no such volume\n")


CLOCK = lambda: 1_800_000_000.0  # noqa: E731  2027-01-15T08:00:00Z
USER_ENV = "# my notes\nCSLR_GPU=off\nexport RAY_CPU_MEMORY=4g   # more memory\n\nPOSTGRES_PASSWORD=old-pg\n"


def backups(tmp_path, name=".env"):
    """The backups of `name`: in the private folder `.env.backups/`, never beside the file."""
    assert not list(tmp_path.glob(f"{name}.bak-*"))
    return sorted(p.name for p in (tmp_path / ENV_BACKUPS).glob(f"{name}.bak-*"))


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
    assert backups(tmp_path) == []


def test_force_replaces_nothing(tmp_path):
    init(tmp_path / "config.yaml", tmp_path / ".env")
    (tmp_path / "config.yaml").write_text("gpu: off\n")
    before = (tmp_path / ".env").read_text()
    done = init(tmp_path / "config.yaml", tmp_path / ".env", force=True)
    assert (tmp_path / ".env").read_text() == before
    assert (tmp_path / "config.yaml").read_text() == "gpu: off\n"
    assert any("--rotate-secrets" in line for line in done)
    assert backups(tmp_path) == []


def test_missing_secrets_are_added_and_every_other_line_kept(tmp_path):
    (tmp_path / ".env").write_text(USER_ENV)
    (tmp_path / ".env").chmod(0o644)
    done = init(tmp_path / "config.yaml", tmp_path / ".env", clock=CLOCK)
    text = (tmp_path / ".env").read_text()
    assert text.startswith(USER_ENV)  # byte for byte, the old secret included
    env = config.parse_dotenv(text, ".env")
    assert env["POSTGRES_PASSWORD"][0] == "old-pg"
    assert set(SECRET_ENV) <= set(env)
    assert all(len(env[k][0]) >= 40 for k in SECRET_ENV if k != "POSTGRES_PASSWORD")
    assert mode(tmp_path / ".env") == 0o600
    assert backups(tmp_path) == [".env.bak-20270115T080000Z"]
    assert (tmp_path / ENV_BACKUPS / ".env.bak-20270115T080000Z").read_text() == USER_ENV
    assert mode(tmp_path / ENV_BACKUPS / ".env.bak-20270115T080000Z") == 0o600
    assert mode(tmp_path / ENV_BACKUPS) == 0o700
    assert done[-1].startswith("added " + ", ".join(k for k in SECRET_ENV if k != "POSTGRES_PASSWORD") + " in ")


def test_a_secret_added_to_the_platform_later_is_added_to_an_existing_env(tmp_path, monkeypatch):
    from cslr import init as init_mod

    init(tmp_path / "config.yaml", tmp_path / ".env")
    before = (tmp_path / ".env").read_text()
    monkeypatch.setattr(init_mod, "SECRET_ENV", (*SECRET_ENV, "CSLR_NEW_SECRET"))
    done = init(tmp_path / "config.yaml", tmp_path / ".env", clock=CLOCK)
    text = (tmp_path / ".env").read_text()
    assert text.startswith(before)
    added = text[len(before) :]
    assert added.startswith("CSLR_NEW_SECRET=") and added.count("\n") == 1 and len(added) > 50
    assert done[-1].startswith("added CSLR_NEW_SECRET in ")


def test_empty_secret_is_filled_in_place(tmp_path):
    (tmp_path / ".env").write_text("REDIS_PASSWORD=\n# tail")
    init(tmp_path / "config.yaml", tmp_path / ".env", clock=CLOCK)
    lines = (tmp_path / ".env").read_text().splitlines()
    assert lines[0].startswith("REDIS_PASSWORD=") and len(lines[0]) > 40
    assert lines[1] == "# tail"  # a last line without newline is kept, then the added secrets follow
    assert lines[2].split("=")[0] in SECRET_ENV


def test_rotate_secrets_replaces_only_secrets_and_keeps_a_backup(tmp_path):
    init(tmp_path / "config.yaml", tmp_path / ".env")
    with (tmp_path / ".env").open("a") as f:
        f.write("# my override\nCSLR_GPU=off\n")
    before = (tmp_path / ".env").read_text()
    old = config.parse_dotenv(before, ".env")
    docker = Docker(volumes={"other_postgres-data"})
    done = init(tmp_path / "config.yaml", tmp_path / ".env", rotate_secrets=True, project="mine", run=docker, clock=CLOCK)
    text = (tmp_path / ".env").read_text()
    new = config.parse_dotenv(text, ".env")
    assert all(new[k][0] != old[k][0] for k in SECRET_ENV)
    assert text.endswith("# my override\nCSLR_GPU=off\n")
    assert text.splitlines()[:2] == before.splitlines()[:2]  # the header comment
    assert [c[3] for c in docker.calls] == ["mine_postgres-data", "mine_redis-data"]
    assert backups(tmp_path) == [".env.bak-20270115T080000Z"]
    assert (tmp_path / ENV_BACKUPS / ".env.bak-20270115T080000Z").read_text() == before
    assert any(line.startswith("replaced POSTGRES_PASSWORD") for line in done)


@pytest.mark.parametrize("volume, secret", [("cslr_postgres-data", "POSTGRES_PASSWORD"), ("cslr_redis-data", "REDIS_PASSWORD")])
def test_rotation_refuses_while_data_volumes_depend_on_the_old_secrets(tmp_path, volume, secret):
    init(tmp_path / "config.yaml", tmp_path / ".env")
    before = (tmp_path / ".env").read_text()
    with pytest.raises(PlatformError, match=rf"refusing --rotate-secrets: volume\(s\) {volume} still depend on the current {secret};"):
        init(tmp_path / "config.yaml", tmp_path / ".env", rotate_secrets=True, project="cslr", run=Docker({volume}), clock=CLOCK)
    assert (tmp_path / ".env").read_text() == before
    assert backups(tmp_path) == []


def test_rotation_reads_the_project_name_from_config(tmp_path, monkeypatch):
    monkeypatch.delenv("CSLR_PROJECT", raising=False)
    init(tmp_path / "config.yaml", tmp_path / ".env")
    (tmp_path / "config.yaml").write_text("project:\n  name: exp7\n")
    with pytest.raises(PlatformError, match="exp7_postgres-data"):
        init(tmp_path / "config.yaml", tmp_path / ".env", rotate_secrets=True, run=Docker({"exp7_postgres-data"}))


def test_rotation_refuses_when_the_engine_cannot_answer(tmp_path):
    init(tmp_path / "config.yaml", tmp_path / ".env")
    before = (tmp_path / ".env").read_text()
    with pytest.raises(PlatformError, match="cannot tell whether volume cslr_postgres-data exists"):
        init(
            tmp_path / "config.yaml",
            tmp_path / ".env",
            rotate_secrets=True,
            project="cslr",
            run=Docker(stderr="Cannot connect to the Docker daemon at unix:///var/run/docker.sock"),
        )
    assert (tmp_path / ".env").read_text() == before


def test_reset_config_backs_up_the_old_config(tmp_path):
    (tmp_path / "config.yaml").write_text("gpu: off\n")
    done = init(tmp_path / "config.yaml", tmp_path / ".env", reset_config=True, clock=CLOCK)
    assert (tmp_path / "config.yaml.bak-20270115T080000Z").read_text() == "gpu: off\n"
    assert (tmp_path / "config.yaml").read_text().startswith("# yaml-language-server: $schema=")
    assert "config.yaml.bak-20270115T080000Z" in done[0]


def test_backups_never_overwrite_each_other(tmp_path):
    (tmp_path / ".env").write_text("A=1\n")
    first = backup(tmp_path / ".env", CLOCK)
    (tmp_path / ".env").write_text("A=2\n")
    second = backup(tmp_path / ".env", CLOCK)
    assert (first.name, second.name) == (".env.bak-20270115T080000Z", ".env.bak-20270115T080000Z-1")
    assert (first.read_text(), second.read_text()) == ("A=1\n", "A=2\n")


def test_generated_config_validates_with_generated_env(tmp_path, monkeypatch):
    from cslr import validate

    monkeypatch.chdir(tmp_path)
    init(tmp_path / "config.yaml", tmp_path / ".env")
    cfg = config.load(tmp_path / "config.yaml", environ={})
    assert [p for p in validate.validate(cfg) if p.severity == "error"] == []


def test_init_refuses_an_env_that_is_not_a_regular_file(tmp_path):
    import os

    import pytest

    from cslr.errors import ConfigFileError
    from cslr.init import init

    os.mkfifo(tmp_path / ".env")  # opening it for reading would block
    with pytest.raises(ConfigFileError, match=r"\.env: cannot read: found a FIFO \(named pipe\), expected a regular file"):
        init(tmp_path / "config.yaml", tmp_path / ".env")
