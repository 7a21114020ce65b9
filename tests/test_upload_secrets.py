"""Secrets never leave the machine through a backup or a job upload (issue 16, item 8).

`inv init`'s backups of `.env` live in `.env.backups/` (0700, its own `.gitignore`), which git
ignores in any repository; `inv submit` never uploads `.env` or a backup, git or not, and refuses
(exit 2) to upload a file that holds the value of a secret, naming the file, never the value.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cslr import config, jobs
from cslr.init import ENV_BACKUPS, init

ROOT = Path(__file__).resolve().parent.parent
CLOCK = lambda: 1_800_000_000.0  # noqa: E731  2027-01-15T08:00:00Z
BACKUP = f"{ENV_BACKUPS}/.env.bak-20270115T080000Z"


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def no_git(*a, **k):
    return subprocess.CompletedProcess(a, 128, b"", b"not a git repository")


def init_with_backup(folder: Path) -> None:
    """`inv init` twice, the second adding a secret the first .env lacked: one backup."""
    (folder / ".env").write_text("POSTGRES_PASSWORD=kept-password-1\n")
    init(folder / "config.yaml", folder / ".env", clock=CLOCK)
    assert (folder / BACKUP).is_file()


@pytest.mark.parametrize("project_gitignore", [True, False], ids=["project-gitignore", "any-repo"])
def test_a_backup_written_by_init_is_ignored_by_git_and_never_uploaded(tmp_path, project_gitignore):
    assert git(tmp_path, "init", "-q").returncode == 0
    if project_gitignore:
        shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    init_with_backup(tmp_path)
    (tmp_path / ".env.bak-20260101T000000Z").write_text((tmp_path / ".env").read_text())  # an older init's backup
    (tmp_path / "train.py").write_text("print('hi')\n")
    assert (tmp_path / ENV_BACKUPS / ".gitignore").read_text().splitlines()[-1] == "*"
    assert oct(os.stat(tmp_path / ENV_BACKUPS).st_mode & 0o777) == "0o700"

    ignored = [BACKUP, f"{ENV_BACKUPS}/.gitignore"] + ([".env", ".env.bak-20260101T000000Z"] if project_gitignore else [])
    check = git(tmp_path, "check-ignore", "--no-index", *ignored)
    assert check.returncode == 0 and check.stdout.split() == ignored
    assert git(tmp_path, "add", "-A").returncode == 0
    tracked = git(tmp_path, "ls-files").stdout.split()
    assert not any(ENV_BACKUPS in name for name in tracked)
    if project_gitignore:
        assert tracked == [".gitignore", "config.yaml", "train.py"]

    # The upload: in the work tree (what git would track) and outside git (every file).
    assert jobs.package_files(tmp_path) == sorted({".gitignore", "config.yaml", "train.py"} - ({".gitignore"} if not project_gitignore else set()))
    assert jobs.package_files(tmp_path, run=no_git) == ([".gitignore"] if project_gitignore else []) + ["config.yaml", "train.py"]


def test_outside_git_env_files_are_skipped_at_any_depth_and_others_scanned(tmp_path):
    for rel in (".env", "sub/.env", "sub/.env.bak-1", f"{ENV_BACKUPS}/x", f"a/{ENV_BACKUPS}/y", ".env.example", "envy.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert jobs.package_files(tmp_path, run=no_git) == [".env.example", "envy.py"]


def test_secret_values_are_the_secrets_and_every_other_value_of_dotenv_but_settings(project):
    env = {
        "POSTGRES_PASSWORD": "pg-password",
        "REDIS_PASSWORD": "short",  # under SECRET_MIN: left out
        "HF_TOKEN": "hf_abcdefghijkl",  # a lab's own secret in .env
        "CSLR_BIND_ADDRESS": "127.0.0.1",  # a setting: config, not a secret
    }
    cfg = config.load(project("{}\n", env), environ={"RAY_AUTH_TOKEN": "from-the-environment"})
    assert jobs.secret_values(cfg) == {"POSTGRES_PASSWORD": "pg-password", "HF_TOKEN": "hf_abcdefghijkl", "RAY_AUTH_TOKEN": "from-the-environment"}


SECRET = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=jobs.SECRET_MIN, max_size=64)
NAME = st.text("abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=20).filter(lambda n: n not in (".", "..") and not n.startswith(".env"))


@settings(max_examples=150, deadline=None)
@given(
    secret=SECRET, before=st.binary(max_size=300), after=st.binary(max_size=300), chunk=st.integers(1, 97), others=st.lists(st.binary(max_size=200), max_size=3)
)
def test_a_secret_anywhere_in_any_file_is_found_across_block_boundaries(secret, before, after, chunk, others):
    needle = secret.encode()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "holds").write_bytes(before + needle + after)
        clean = []
        for i, data in enumerate(others):
            if needle not in data:
                (folder / f"other{i}").write_bytes(data)
                clean.append(f"other{i}")
        hits = jobs.find_secrets(folder, ["holds", *clean], {"RAY_AUTH_TOKEN": secret, "OTHER": "x" * 8 + secret[::-1] + "y"}, chunk=chunk)
        assert ("holds", ["RAY_AUTH_TOKEN"]) in hits
        assert [rel for rel, _ in hits if rel != "holds"] == []


def _submit_in(folder: Path, files: dict[str, bytes], secret: str, key: str):
    (folder / "config.yaml").write_text("{}\n")
    (folder / ".env").write_text(f"{key}={secret}\n")
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    cfg = config.load(folder / "config.yaml", environ={})

    def never_called(*a, **k):
        raise AssertionError("the cluster was contacted although the upload holds a secret")

    return jobs.submit(cfg, "python train.py", folder, run=no_git, out=never_called)


@settings(max_examples=60, deadline=None)
@given(
    secret=SECRET,
    key=st.sampled_from(["RAY_AUTH_TOKEN", "POSTGRES_PASSWORD", "CSLR_CONTROL_SECRET", "WANDB_API_KEY"]),
    name=NAME,
    depth=st.lists(NAME, max_size=2),
    before=st.binary(max_size=200),
    after=st.binary(max_size=200),
    secret_in_name=st.booleans(),
)
def test_submit_refuses_any_file_that_holds_a_secret_and_never_shows_it(secret, key, name, depth, before, after, secret_in_name):
    rel = "/".join([*depth, (secret + "-" if secret_in_name else "") + name])
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(jobs.SecretInUploadError) as caught:
            _submit_in(Path(tmp), {rel: before + secret.encode() + after, "train.py": b"print(1)\n"}, secret, key)
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert secret not in message  # not the value, not even in a file's name
    assert f": the value of {key}" in message
    assert rel.replace(secret, "***") in message
    assert "train.py" not in message


def test_submit_without_secrets_in_the_upload_goes_on_to_the_cluster(tmp_path):
    # The scan passes; the next step is the cluster (not running here): the usual error, not a refusal.
    with pytest.raises(jobs.JobError, match="does not answer"):
        _submit_in(tmp_path, {"train.py": b"print(1)\n"}, "s3cr3t-value-0123", "RAY_AUTH_TOKEN")


def test_inv_submit_exits_2_naming_the_file_not_the_value(project, tmp_path):
    from tests.conftest import SECRETS
    from tests.test_tasks import inv

    project("{}\n", {**SECRETS, "RAY_AUTH_TOKEN": "tok-0123456789abcdef"})
    (tmp_path / "train.py").write_text('TOKEN = "tok-0123456789abcdef"\n')
    out = inv("submit", "--", "python", "train.py", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "train.py: the value of RAY_AUTH_TOKEN" in out.stderr
    assert "tok-0123456789abcdef" not in out.stderr + out.stdout and "Traceback" not in out.stderr


def test_backup_archives_are_never_uploaded():
    from cslr import jobs

    for rel in ("backups/cslr-cslr-20261206T000000Z.tar", "backups/cslr-cslr-pre-mlflow-upgrade-20261206T000000Z.pgdump", "backups/cslr-x.tar.part"):
        assert jobs.never_uploaded(rel), rel
    for rel in ("backups/notes.md", "data/backups/cslr-x.tar", "cslr-x.tar"):
        assert not jobs.never_uploaded(rel), rel
