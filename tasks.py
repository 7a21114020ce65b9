"""Invoke tasks of the CSLR Experiment Platform. Thin: each calls the `cslr` package.

    inv init | validate | generate | up | down | ps | logs | status | test-cluster | schema | submit | jobs
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Exit, task

from cslr import compose, config, effective, images, lifecycle, schema_docs
from cslr import report as report_mod
from cslr import stack as stack_mod
from cslr.errors import PlatformError
from cslr.init import init as init_files
from cslr.project import generation_report, load_validated, plan_for, relative

ROOT = Path(__file__).resolve().parent
_config_mod = config  # the `config` module, reachable inside tasks whose --config parameter shadows it
CONFIG_HELP = "config.yaml to read (default: ./config.yaml)"
ENV_HELP = ".env to read (default: the .env beside the config file)"


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


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "force": "overwrite existing files (regenerates every secret: existing databases keep the old password)"})
def init(c, config="config.yaml", env_file=None, force=False):
    """Write config.yaml (if absent) and .env with new random secrets (mode 0600)."""
    cfg_path = Path(config)
    try:
        for line in init_files(cfg_path, Path(env_file) if env_file else cfg_path.parent / ".env", force=force):
            print(line)
    except PlatformError as exc:
        raise _fail(exc) from None


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP})
def validate(c, config="config.yaml", env_file=None):
    """Validate config.yaml, .env and the environment; report every problem (exit 2 on errors)."""
    loaded = _loaded(config, env_file)
    print(loaded.gpu.describe())
    print(f"{config}: valid")


@task(name="config", help={"config": CONFIG_HELP, "env_file": ENV_HELP})
def show_config(c, config="config.yaml", env_file=None):
    """Show every setting's effective value and its origin (schema default, config.yaml:LINE, .env:LINE, environment); secrets masked."""
    try:
        cfg = _config_mod.load(config, env_file)
    except PlatformError as exc:
        raise _fail(exc) from None
    print(effective.table(effective.rows(cfg)))


HOST_HELP = "multi-host: the host of config.yaml's `hosts:` to act for (default: this machine's hostname)"


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "out": "output directory (default: _build)", "test_cluster": "include the test-cluster runner (profile `test`)", "host": HOST_HELP})
def generate(c, config="config.yaml", env_file=None, out="_build", test_cluster=True, host=None):
    """Validate, choose overlays, merge them with `docker compose config` into _build/compose.yaml."""
    loaded = _loaded(config, env_file)
    try:
        source, why = lifecycle.resolve_image_source(loaded.cfg, images.services_of(loaded.cfg, loaded.gpu.node_enabled), probe_pull=False)
        print(f"{why} -> {source}")
        plan = plan_for(loaded, test_cluster=test_cluster, host=host, image_source=source)
    except PlatformError as exc:
        raise _fail(exc) from None
    out_dir = _out_dir(out)
    try:
        written = compose.generate(plan, out_dir)
    except PlatformError as exc:
        raise _fail(exc) from None
    print("\n".join(generation_report(plan, written, out_dir, ROOT)))


@task(help={"output": "write the schema to this file instead of printing it", "docs": "regenerate docs/config-reference.md from the schema"})
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


# ----------------------------------------------------------------------------- the running stack


def _stack(config, env_file, out="_build", generate_first=False, host=None, probe_pull=False):
    loaded = _loaded(config, env_file)
    build_dir = _out_dir(out)
    if generate_first:
        try:
            source, why = lifecycle.resolve_image_source(loaded.cfg, images.services_of(loaded.cfg, loaded.gpu.node_enabled), probe_pull=probe_pull)
            if probe_pull:
                print(why)
            compose.generate(plan_for(loaded, host=host, image_source=source), build_dir)
        except PlatformError as exc:
            raise _fail(exc) from None
    elif not (build_dir / "compose.yaml").exists():
        raise Exit(f"{build_dir / 'compose.yaml'} does not exist: run `inv generate` or `inv up` first", code=1)
    return stack_mod.Stack(loaded.cfg, build_dir)


OUT_HELP = "directory of the generated project (default: _build)"


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "out": OUT_HELP, "timeout": "seconds to wait for every service to become healthy", "build": "rebuild the project's images even when their tags exist", "host": HOST_HELP, "show_secrets": "print the Marimo token in full in the table"})
def up(c, config="config.yaml", env_file=None, out="_build", timeout=600, build=False, host=None, show_secrets=False):
    """Generate, preflight, make the images present, start the stack and wait until it is healthy."""
    st = _stack(config, env_file, out, generate_first=True, host=host, probe_pull=True)
    try:
        rows = lifecycle.bring_up(st, lifecycle.UpOptions(timeout=float(timeout), build=build))
    except PlatformError as exc:
        raise _fail(exc) from None
    print(st.table(rows, show_secrets=show_secrets))


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "dest": "folder to download into (default: wheelhouse/)", "force": "download again even when complete"})
def wheelhouse(c, config="config.yaml", env_file=None, dest=None, force=False):
    """Download every wheel the images' pip layers need (bases, project images, experiment)."""
    from cslr import wheelhouse as wh

    loaded = _loaded(config, env_file)
    try:
        print(wh.ensure(loaded.cfg, Path(dest) if dest else wh.DEFAULT_DIR, force=force))
    except PlatformError as exc:
        raise _fail(exc) from None


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "out": OUT_HELP, "volumes": "also delete every volume (MLflow runs, Postgres, Redis, notebooks); needs --yes", "yes": "confirm --volumes"})
def down(c, config="config.yaml", env_file=None, out="_build", volumes=False, yes=False):
    """Stop and remove the stack's containers; volumes are kept unless --volumes --yes."""
    try:
        # Without a generated project (a fresh checkout, a new --out) generate one to know the stack.
        _stack(config, env_file, out, generate_first=not (_out_dir(out) / "compose.yaml").exists()).down(volumes=volumes, yes=yes)
    except PlatformError as exc:
        raise _fail(exc) from None


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "out": OUT_HELP, "show_secrets": "print the Marimo token in full"})
def ps(c, config="config.yaml", env_file=None, out="_build", show_secrets=False):
    """List the stack's containers with state and health."""
    st = _stack(config, env_file, out)
    try:
        print(st.table(st.services(), show_secrets=show_secrets))
    except PlatformError as exc:
        raise _fail(exc) from None


@task(help={"service": "one service (default: all)", "follow": "keep following the output", "tail": "lines per service to show first", "config": CONFIG_HELP, "env_file": ENV_HELP, "out": OUT_HELP})
def logs(c, service=None, follow=False, tail=200, config="config.yaml", env_file=None, out="_build"):
    """Show the logs of the stack or of one service."""
    st = _stack(config, env_file, out)
    args = ["logs", "--no-color", "--tail", str(tail)] + (["--follow"] if follow else []) + ([service] if service else [])
    code = st.compose(args, capture=False).returncode
    if code:
        raise Exit(code=code)


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "out": OUT_HELP})
def status(c, config="config.yaml", env_file=None, out="_build"):
    """Ray nodes (hostname, IP, role, CPUs, GPUs, alive), the head, MLflow and Redis reachability."""
    st = _stack(config, env_file, out)
    try:
        report = st.status()
    except PlatformError as exc:
        raise _fail(exc) from None
    print(report_mod.format_status(report))
    if not report["ray_nodes"] or report["head"] is None:
        raise Exit("no live Ray head", code=1)


@task(name="test-cluster", help={"config": CONFIG_HELP, "env_file": ENV_HELP, "out": OUT_HELP})
def test_cluster(c, config="config.yaml", env_file=None, out="_build"):
    """Run the test-cluster container against the running stack; the exit code says pass or fail."""
    st = _stack(config, env_file, out)
    code = st.test_cluster()
    if code:
        raise Exit("test-cluster failed", code=code)


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "host": HOST_HELP})
def firewall(c, config="config.yaml", env_file=None, host=None):
    """Print the ufw and iptables rules this host needs in a multi-host cluster."""
    from cslr import multihost

    loaded = _loaded(config, env_file)
    try:
        print(multihost.firewall_rules(loaded.cfg, host))
    except KeyError as exc:
        raise Exit(str(exc.args[0]), code=2) from None


# ----------------------------------------------------------------------------- Ray jobs


def _job_command(c) -> str:
    # Invoke joins what follows `--` with spaces; the original argv keeps each argument's quoting.
    import shlex

    return shlex.join(sys.argv[sys.argv.index("--") + 1 :]) if "--" in sys.argv else c.remainder


@task(help={"wait": "follow the job's logs until it ends; exit with its code (SUCCEEDED 0, FAILED 1, STOPPED 130)", "name": "submission id (default: Ray picks one)",
            "working_dir": "folder uploaded as the job's working dir (default: the current folder)", "config": CONFIG_HELP, "env_file": ENV_HELP})
def submit(c, wait=False, name=None, working_dir=".", config="config.yaml", env_file=None):
    """Submit a Ray job to the current head: inv submit [--wait] [--name N] -- python train.py ..."""
    from cslr import jobs as jobs_mod

    loaded = _loaded(config, env_file)
    try:
        code = jobs_mod.submit(loaded.cfg, _job_command(c), Path(working_dir), name=name, follow=wait)
    except PlatformError as exc:
        raise _fail(exc) from None
    if code:
        raise Exit(code=code)


@task(help={"logs": "show this job's output", "stop": "stop this job", "config": CONFIG_HELP, "env_file": ENV_HELP})
def jobs(c, logs=None, stop=None, config="config.yaml", env_file=None):
    """Ray jobs of the cluster: inv jobs (list) | inv jobs --logs ID | inv jobs --stop ID."""
    from cslr import jobs as jobs_mod

    loaded = _loaded(config, env_file)
    if logs and stop:
        raise Exit("give one of --logs ID and --stop ID", code=2)
    try:
        client = jobs_mod.client_for(loaded.cfg)
        if logs:
            print(client.logs(logs), end="")
        elif stop:
            print(f"{stop}: {'stop requested' if client.stop(stop) else 'not running (nothing to stop)'}")
        else:
            print(jobs_mod.format_jobs(client.list()))
    except PlatformError as exc:
        raise _fail(exc) from None
