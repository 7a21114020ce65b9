"""Invoke tasks of the CSLR Experiment Platform. Thin: each calls the `cslr` package.

    inv init | validate | generate | up | down | ps | logs SERVICE | status | test-cluster | schema | firewall | export k8s | submit | jobs

Conventions (tested in tests/test_tasks.py): `-h` is help in every task; a short flag means the
same option in every task that has it (SHORT_FLAGS) and no other option gets one; shared options
have one default and one help text (COMMON_HELP); `cli` turns a PlatformError into its message
and exit code, never a traceback.
"""

from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path

from invoke import Exit, Task, task

from cslr import compose, config, effective, images, lifecycle, schema_docs
from cslr import report as report_mod
from cslr import stack as stack_mod
from cslr.errors import PlatformError
from cslr.init import init as init_files
from cslr.project import generation_report, load_validated, plan_for, relative

ROOT = Path(__file__).resolve().parent
_config_mod = config  # the `config` module, reachable inside tasks whose --config parameter shadows it
CONFIG, OUT = "config.yaml", "_build"  # the defaults of --config and --out, for every task
CONFIG_HELP = "config.yaml to read (default: ./config.yaml)"
ENV_HELP = ".env to read (default: the .env beside the config file)"
OUT_HELP = "directory of the generated project (default: _build)"
HOST_HELP = "multi-host: the host of config.yaml's `hosts:` to act for (default: this machine's hostname)"
COMMON_HELP = {"config": CONFIG_HELP, "env_file": ENV_HELP, "out": OUT_HELP, "host": HOST_HELP}
# The only short flags. -h stays Invoke's --help; -H is --host.
SHORT_FLAGS = {"config": "c", "env_file": "e", "out": "o", "host": "H", "follow": "f", "tail": "n", "build": "b", "volumes": "v", "yes": "y"}


class CliTask(Task):
    """A task whose short flags come from SHORT_FLAGS only (Invoke would pick first free letters)."""

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        if name in SHORT_FLAGS:
            opts["names"] = [*opts["names"], SHORT_FLAGS[name]]
        return opts

    def get_arguments(self, ignore_unknown_help=None):
        saved = dict(self.help)  # Invoke consumes `help`; keep it for a second rendering (see _print_help)
        try:
            return super().get_arguments(ignore_unknown_help)
        finally:
            self.help = saved


def cli(**kwargs):
    """`@task` with the shared help texts and short flags; PlatformError -> its message and exit code."""

    def wrap(body):
        params = inspect.signature(body).parameters
        helps = {k: v for k, v in COMMON_HELP.items() if k in params}
        helps.update(kwargs.pop("help", {}))

        @functools.wraps(body)
        def run(c, *args, **kw):
            # Invoke hands `-h` after a task with a positional to that positional: it is still help.
            if any(kw.get(name) in ("-h", "--help") for name in kwargs.get("positional", ())):
                return _print_help(kwargs.get("name") or body.__name__)
            try:
                return body(c, *args, **kw)
            except PlatformError as exc:
                raise _fail(exc) from None

        return task(run, klass=CliTask, auto_shortflags=False, help=helps, **kwargs)

    return wrap


def _print_help(name: str) -> None:
    from invoke import Collection, Program

    Program(namespace=Collection.from_module(sys.modules[__name__]), binary="inv").run(["inv", "--help", name], exit=False)


def _out_dir(out: str) -> Path:
    return Path(out) if Path(out).is_absolute() else ROOT / out


def _fail(exc: PlatformError) -> Exit:
    return Exit(str(exc), code=exc.exit_code)


def _loaded(config_path: str, env_file: str | None):
    try:
        loaded = load_validated(config_path, env_file)
    except PlatformError as exc:
        raise _fail(exc) from None
    for warning in loaded.warnings:
        print(warning, file=sys.stderr)
    return loaded


@cli(
    help={
        "force": "accepted for compatibility; replaces nothing",
        "rotate_secrets": "replace every secret in .env (after a backup); refused while the Postgres or Redis volume exists",
        "reset_config": "rewrite config.yaml from the template (after a backup)",
        "project": "a stack of this folder's own beside others on this machine: this Compose project name, a free subnet and free host ports, written to .env",
    }
)
def init(c, config=CONFIG, env_file=None, force=False, rotate_secrets=False, reset_config=False, project=None):
    """Write config.yaml (if absent) and .env with new random secrets (mode 0600); add missing secrets, keep the rest."""
    cfg_path = Path(config)
    env_path = Path(env_file) if env_file else cfg_path.parent / ".env"
    for line in init_files(cfg_path, env_path, force=force, rotate_secrets=rotate_secrets, reset_config=reset_config):
        print(line)
    if project is not None:
        from cslr import beside

        for line in beside.make(cfg_path, env_path, project):
            print(line)


@cli()
def validate(c, config=CONFIG, env_file=None):
    """Validate config.yaml, .env and the environment; report every problem (exit 2 on errors)."""
    loaded = _loaded(config, env_file)
    print(loaded.gpu.describe())
    print(f"{loaded.cfg.config_path}: valid")


@cli(name="config")
def show_config(c, config=CONFIG, env_file=None):
    """Show every setting's effective value and its origin (schema default, config.yaml:LINE, .env:LINE, environment); secrets masked."""
    print(effective.table(effective.rows(_config_mod.load(config, env_file))))


@cli(help={"test_cluster": "include the test-cluster runner (profile `test`)"})
def generate(c, config=CONFIG, env_file=None, out=OUT, test_cluster=True, host=None):
    """Validate, choose overlays, merge them with `docker compose config` into _build/compose.yaml."""
    loaded = _loaded(config, env_file)
    source, why = lifecycle.resolve_image_source(loaded.cfg, images.services_of(loaded.cfg, loaded.gpu.node_enabled), probe_pull=False)
    print(f"{why} -> {source}")
    plan = plan_for(loaded, test_cluster=test_cluster, host=host, image_source=source)
    out_dir = _out_dir(out)
    written = compose.generate(plan, out_dir)
    print("\n".join(generation_report(plan, written, out_dir, ROOT)))


@cli(help={"output": "write the schema to this file instead of printing it", "docs": "regenerate docs/config-reference.md from the schema"})
def schema(c, output=None, docs=False):
    """Print the JSON Schema of config.yaml, or regenerate its reference documentation."""
    if docs:
        path = schema_docs.write_reference()
        print(f"wrote {relative(path, ROOT)}")
        return
    text = config.SCHEMA_PATH.read_text()
    if output:
        from cslr.fsutil import write_atomic

        write_atomic(output, text)
        print(f"wrote {output}")
    else:
        print(text, end="")


EXPORT_TARGETS = ("k8s",)


@cli(
    positional=["target"],
    help={"target": "what to export: k8s (Kubernetes manifests for KubeRay, docs/kubernetes.md)", "out": "directory of the export (default: _build/k8s)"},
)
def export(c, target, config=CONFIG, env_file=None, out=None):
    """Write the stack for another platform: `inv export k8s` -> a RayCluster, the services, a Secret (0600), kustomization.yaml."""
    if target not in EXPORT_TARGETS:
        raise Exit(f"unknown export target {target!r}; expected one of: {', '.join(EXPORT_TARGETS)}", code=2)
    from cslr import k8s

    loaded = _loaded(config, env_file)
    out_dir = _out_dir(out) if out else _out_dir(OUT) / "k8s"
    for path in k8s.export(loaded.cfg, out_dir):
        print(f"wrote {relative(path, ROOT)} (mode {path.stat().st_mode & 0o777:04o})")
    print(f"apply: kubectl apply -k {relative(out_dir, ROOT)}   (push the images in {k8s.IMAGE_LIST} first; docs/kubernetes.md)")


# ----------------------------------------------------------------------------- the running stack


def _stack(config, env_file, out=OUT, generate_first=False, host=None, probe_pull=False, loaded=None):
    loaded = loaded or _loaded(config, env_file)
    build_dir = _out_dir(out)
    if generate_first:
        source, why = lifecycle.resolve_image_source(loaded.cfg, images.services_of(loaded.cfg, loaded.gpu.node_enabled), probe_pull=probe_pull)
        if probe_pull:
            print(why)
        compose.generate(plan_for(loaded, host=host, image_source=source), build_dir)
    elif not (build_dir / "compose.yaml").exists():
        raise Exit(f"{build_dir / 'compose.yaml'} does not exist: run `inv generate` or `inv up` first", code=1)
    return stack_mod.Stack(loaded.cfg, build_dir)


@cli(
    help={
        "timeout": "seconds to wait for every service to become healthy",
        "build": "rebuild the project's images even when their tags exist",
        "show_secrets": "print the Marimo token in full in the table",
    }
)
def up(c, config=CONFIG, env_file=None, out=OUT, timeout=600, build=False, host=None, show_secrets=False):
    """Generate, preflight, make the images present, start the stack and wait until it is healthy."""
    # Whose stack and data: refused (exit 2) before anything, even the generated project, changes.
    loaded = _loaded(config, env_file)
    for line in lifecycle.claim_before_generate(loaded.cfg, _out_dir(out)):
        print(line)
    st = _stack(config, env_file, out, generate_first=True, host=host, probe_pull=True, loaded=loaded)
    rows = lifecycle.bring_up(st, lifecycle.UpOptions(timeout=float(timeout), build=build, claimed=True))
    print(st.table(rows, show_secrets=show_secrets))


@cli(help={"dest": "folder to download into (default: wheelhouse/)", "force": "download again even when complete"})
def wheelhouse(c, config=CONFIG, env_file=None, dest=None, force=False):
    """Download every wheel the images' pip layers need (bases, project images, experiment)."""
    from cslr import wheelhouse as wh

    # Needs the image settings only: no secrets, so it runs before `inv init` (make bases, CI).
    print(wh.ensure(_config_mod.load(config, env_file), Path(dest) if dest else wh.DEFAULT_DIR, force=force))


@cli(help={"volumes": "also delete every volume (MLflow runs, Postgres, Redis, notebooks); needs --yes", "yes": "confirm --volumes"})
def down(c, config=CONFIG, env_file=None, out=OUT, volumes=False, yes=False):
    """Stop and remove the stack's containers; volumes are kept unless --volumes --yes."""
    # Without a generated project (a fresh checkout, a new --out) generate one to know the stack.
    st = _stack(config, env_file, out, generate_first=not (_out_dir(out) / "compose.yaml").exists())
    st.claim("down")
    st.down(volumes=volumes, yes=yes)


@cli(help={"show_secrets": "print the Marimo token in full"})
def ps(c, config=CONFIG, env_file=None, out=OUT, show_secrets=False):
    """List the stack's containers with state and health."""
    st = _stack(config, env_file, out)
    st.claim("ps")
    print(st.table(st.services(), show_secrets=show_secrets))


@cli(
    positional=["service"],
    help={"service": "the service, e.g. ray-cpu, or `all`", "follow": "keep following the output", "tail": "lines per service to show first"},
)
def logs(c, service, follow=False, tail=200, config=CONFIG, env_file=None, out=OUT):
    """Show the logs of one service (`inv logs ray-cpu`) or of the whole stack (`inv logs all`)."""
    st = _stack(config, env_file, out)
    st.claim("logs")
    args = ["logs", "--no-color", "--tail", str(tail)] + (["--follow"] if follow else []) + ([] if service == "all" else [service])
    code = st.compose(args, capture=False).returncode
    if code:
        raise Exit(code=code)


@cli()
def status(c, config=CONFIG, env_file=None, out=OUT):
    """Ray nodes (hostname, IP, role, CPUs, GPUs, alive), the head, MLflow and Redis reachability."""
    report = _stack(config, env_file, out).status()
    print(report_mod.format_status(report))
    if not report["ray_nodes"] or report["head"] is None:
        raise Exit("no live Ray head", code=1)


@cli(name="test-cluster")
def test_cluster(c, config=CONFIG, env_file=None, out=OUT):
    """Run the test-cluster container against the running stack; the exit code says pass or fail."""
    code = _stack(config, env_file, out).test_cluster()
    if code:
        raise Exit("test-cluster failed", code=code)


@cli(help={"remove": "print the commands that remove the rules instead"})
def firewall(c, config=CONFIG, env_file=None, host=None, remove=False):
    """Print the iptables script (DOCKER-USER and INPUT) that admits only the other hosts; pipe it to `sudo sh`."""
    from cslr import multihost

    if remove:
        print(multihost.firewall_removal())
        return
    print(multihost.firewall_rules(_loaded(config, env_file).cfg, host))


# ----------------------------------------------------------------------------- Ray jobs


def _job_command(c) -> str:
    # Invoke joins what follows `--` with spaces; the original argv keeps each argument's quoting.
    import shlex

    return shlex.join(sys.argv[sys.argv.index("--") + 1 :]) if "--" in sys.argv else c.remainder


@cli(
    help={
        "wait": "follow the job's logs until it ends; exit with its code (SUCCEEDED 0, FAILED 1, STOPPED 130)",
        "name": "submission id (default: Ray picks one)",
        "working_dir": "folder uploaded as the job's working dir (default: the current folder)",
        "off_head": "run the job's driver on a worker, not the head: with GCS fault tolerance the job then survives a head failure",
    }
)
def submit(c, wait=False, name=None, working_dir=".", off_head=False, config=CONFIG, env_file=None):
    """Submit a Ray job to the current head: inv submit [--wait] [--name N] [--off-head] -- python train.py ..."""
    from cslr import jobs as jobs_mod

    code = jobs_mod.submit(_loaded(config, env_file).cfg, _job_command(c), Path(working_dir), name=name, follow=wait, off_head=off_head)
    if code:
        raise Exit(code=code)


@cli(help={"logs": "show this job's output", "stop": "stop this job"})
def jobs(c, logs=None, stop=None, config=CONFIG, env_file=None):
    """Ray jobs of the cluster: inv jobs (list) | inv jobs --logs ID | inv jobs --stop ID."""
    from cslr import jobs as jobs_mod

    loaded = _loaded(config, env_file)
    if logs and stop:
        raise Exit("give one of --logs ID and --stop ID", code=2)
    client = jobs_mod.client_for(loaded.cfg)
    if logs:
        print(client.logs(logs), end="")
    elif stop:
        print(f"{stop}: {'stop requested' if client.stop(stop) else 'not running (nothing to stop)'}")
    else:
        print(jobs_mod.list_jobs(client))
