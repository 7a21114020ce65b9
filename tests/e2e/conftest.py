"""The e2e tier's shared fixtures: the stack, brought up once per session by the product's own
`inv up` as a non-root docker-group user, dumped (ps + logs) when a test fails, always torn down.

Modelled on getsentry/self-hosted's integration tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cslr import compose


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Lets a fixture see whether its test failed, to dump `ps` and logs only then.
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


ROOT = Path(__file__).resolve().parents[2]
E2E = Path(__file__).resolve().parent
PROJECT = "cslr-e2e"
# The tier runs the product as a user does: not root, a member of the `docker` group, in a clone
# of their own with the venv `make venv` gives them (runtime dependencies only).
E2E_USER = "cslr-e2e"


def clean_env() -> dict:
    # The stack's settings come from the test's config and .env only, never from the caller's shell.
    drop = ("RAY_", "CSLR_", "HEAD_", "MLFLOW_", "REDIS_", "POSTGRES_", "MARIMO_", "COMPOSE_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def compose_cmd(build: Path) -> list[str]:
    return [compose.compose_binary(), "--env-file", str(build / ".env"), "-f", str(build / "compose.yaml")]


class Inv:
    """`inv` as the e2e user, from that user's clone (`prefix` = runuser ... when we are root)."""

    def __init__(self, workdir: Path, repo: Path = ROOT, prefix: list[str] | None = None, env: dict | None = None):
        self.workdir, self.repo, self.prefix, self.env = workdir, repo, prefix or [], env or clean_env()

    def __call__(self, *args: str, timeout: float = 900, check: bool = False) -> subprocess.CompletedProcess:
        python = str(self.repo / ".venv" / "bin" / "python") if self.prefix else sys.executable
        cmd = [*self.prefix, python, "-m", "invoke", "--search-root", str(self.repo)]
        task_args, rest = (list(args[: args.index("--")]), list(args[args.index("--") :])) if "--" in args else (list(args), [])
        if args[0] not in ("init", "schema", "wheelhouse"):
            task_args += ["--config", str(self.workdir / "config.yaml")]
            if args[0] not in ("submit", "jobs"):  # the Ray jobs tasks need no generated project
                task_args += ["--out", str(self.workdir / "_build")]
        cmd += task_args + rest
        proc = subprocess.run(cmd, cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=timeout)
        sys.stdout.write(f"\n$ inv {' '.join(args)}  -> exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        if check and proc.returncode != 0:
            raise AssertionError(f"inv {' '.join(args)} failed with exit {proc.returncode}")
        return proc


def dump(inv: Inv) -> None:
    build = inv.workdir / "_build"
    if not (build / "compose.yaml").exists():
        return
    for args in (["ps", "-a"], ["logs", "--no-color", "--tail", "80"]):
        proc = subprocess.run(compose_cmd(build) + args, capture_output=True, text=True, env=clean_env())
        sys.stdout.write(f"\n$ docker compose {' '.join(args)}\n{proc.stdout}{proc.stderr}")


def remove_project(project: str) -> None:
    """The tier's own cleanup of a test project's leftovers, by Compose's project label. Not
    `inv down`: that refuses a stack whose folder (an interrupted run's clone) still exists."""
    label = f"label=com.docker.compose.project={project}"
    for ls, rm in ((["ps", "-aq"], ["rm", "-f"]), (["network", "ls", "-q"], ["network", "rm"]), (["volume", "ls", "-q"], ["volume", "rm", "-f"])):
        ids = subprocess.run(["docker", *ls, "--filter", label], capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", *rm, *ids], capture_output=True)


def ensure_user() -> None:
    if subprocess.run(["id", "-u", E2E_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--groups", "docker", E2E_USER], check=True)
    else:
        subprocess.run(["usermod", "-aG", "docker", E2E_USER], check=True)


def invoking_uid(inv: "Inv") -> int:
    """The uid of the user the tier runs `inv` as (the e2e user when the tests run as root)."""
    import pwd

    return pwd.getpwnam(E2E_USER).pw_uid if inv.prefix else os.getuid()


def user_env(path_prefix: str = "") -> dict:
    home = Path(f"~{E2E_USER}").expanduser()
    return {**clean_env(), "HOME": str(home), "USER": E2E_USER, "LOGNAME": E2E_USER, "PATH": path_prefix + "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}


RUNUSER = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", E2E_USER, "--"]


def clone_for_user(tmp_root: Path, prefix: str = "cslr-e2e-clone-") -> Path:
    """As root: a copy of this checkout's files (what `git clone` gives, plus uncommitted work)
    owned by the e2e user. Wheels are hard links into the checkout's wheelhouse (same content)."""
    ensure_user()
    clone = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_root))
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        if (ROOT / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, clone / rel)
    for wheel in list((ROOT / "wheelhouse").glob("*.whl")) + list((ROOT / "wheelhouse").glob(".complete-*")):
        try:
            os.link(wheel, clone / "wheelhouse" / wheel.name)
        except OSError:
            shutil.copy2(wheel, clone / "wheelhouse" / wheel.name)
    subprocess.run(["chown", "-R", f"{E2E_USER}:", str(clone)], check=True)
    os.chmod(clone, 0o755)
    return clone


def user_clone(tmp_root: Path) -> tuple[Path, list[str], dict]:
    """The e2e user's clone with the venv `make venv` gives it."""
    clone, env = clone_for_user(tmp_root), user_env()
    made = subprocess.run([*RUNUSER, "make", "-C", str(clone), "venv"], env=env, capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stdout + made.stderr
    return clone, list(RUNUSER), env


@pytest.fixture(scope="session")
def inv(tmp_path_factory):
    if shutil.which("docker") is None:
        pytest.fail("the e2e tier needs the Docker engine and the local bases; run `make e2e`")
    if os.geteuid() == 0:
        repo, prefix, env = user_clone(Path(tempfile.gettempdir()))
        workdir = repo / "_e2e"
        subprocess.run([*prefix, "mkdir", "-p", str(workdir)], check=True)
    else:  # a developer in the docker group runs the tier as themselves
        repo, prefix, env = ROOT, [], clean_env()
        workdir = tmp_path_factory.mktemp("e2e")
    for name in ("config.yaml", "no-gpu-devices.yaml"):
        shutil.copy(E2E / name, workdir / name)
        if prefix:
            subprocess.run(["chown", f"{E2E_USER}:", str(workdir / name)], check=True)
    # A data set on the host (absolute path: it depends on the work dir): read-only at /data/sample.
    sample = workdir / "sample-data"
    sample.mkdir(exist_ok=True)
    (sample / "glosses.txt").write_text("HELLO\nTHANK-YOU\n")
    # The CSLR example's shipped sample in its data format (annotations.csv, keypoints/*.npy),
    # read-only at /data/cslr: `train.py --data /data/cslr` (test_research.py).
    cslr = workdir / "cslr-data"
    shutil.copytree(ROOT / "examples" / "cslr" / "sample", cslr, dirs_exist_ok=True)
    # The user's writable workspace: /workspace in every Ray node and the notebook.
    workspace = workdir / "workspace"
    workspace.mkdir(exist_ok=True)
    with open(workdir / "config.yaml", "a") as handle:
        handle.write(f"data:\n  sample: {sample}\n  cslr: {cslr}\nworkspace: {workspace}\n")
    if prefix:
        subprocess.run(["chown", "-R", f"{E2E_USER}:", str(sample), str(cslr), str(workspace)], check=True)
    with running_stack(Inv(workdir, repo, prefix, env), PROJECT) as runner:
        yield runner


@contextlib.contextmanager
def running_stack(runner: Inv, project: str):
    """`inv init`, then `inv up` (timed: runner.up_seconds, runner.up_output) of a stack the
    e2e tier owns; `ps` and logs dumped when `up` or the body fails; whatever happens,
    `inv down --volumes --yes`, the project's leftovers removed and a root-made clone deleted."""
    runner("init", "--config", str(runner.workdir / "config.yaml"), check=True)
    remove_project(project)  # leftovers of an interrupted earlier run (whose clone may still exist)
    try:
        started = time.monotonic()
        up = runner("up", "--timeout", "600")
        runner.up_seconds = time.monotonic() - started  # images present: a warm `inv up`
        runner.up_output = up.stdout + up.stderr
        if up.returncode != 0:
            raise AssertionError(f"inv up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
        yield runner
    except BaseException:
        dump(runner)
        raise
    finally:
        runner("down", "--volumes", "--yes", timeout=300)
        remove_project(project)
        if runner.prefix:
            shutil.rmtree(runner.repo, ignore_errors=True)


@pytest.fixture
def dump_on_failure(request, inv):
    """`ps` and logs of the stack after a failed test (the modules that use the stack ask for it)."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dump(inv)
