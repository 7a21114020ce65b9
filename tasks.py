"""Invoke tasks of the CSLR Experiment Platform. Thin: each calls the `cslr` package.

    inv init | validate | generate | up | down | ps | logs | status | test-cluster | schema
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Exit, task

from cslr import compose, config, schema_docs
from cslr import stack as stack_mod
from cslr.errors import PlatformError
from cslr.init import init as init_files
from cslr.project import generation_report, load_validated, plan_for, relative

ROOT = Path(__file__).resolve().parent
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


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "force": "accepted for compatibility; replaces nothing",
            "rotate_secrets": "replace every secret in .env (after a backup); refused while the Postgres or Redis volume exists",
            "reset_config": "rewrite config.yaml from the template (after a backup)"})
def init(c, config="config.yaml", env_file=None, force=False, rotate_secrets=False, reset_config=False):
    """Write config.yaml (if absent) and .env with new random secrets (mode 0600); add missing secrets, keep the rest."""
    cfg_path = Path(config)
    try:
        for line in init_files(cfg_path, Path(env_file) if env_file else cfg_path.parent / ".env", force=force,
                               rotate_secrets=rotate_secrets, reset_config=reset_config):
            print(line)
    except PlatformError as exc:
        raise _fail(exc) from None


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP})
def validate(c, config="config.yaml", env_file=None):
    """Validate config.yaml, .env and the environment; report every problem (exit 2 on errors)."""
    loaded = _loaded(config, env_file)
    print(loaded.gpu.describe())
    print(f"{config}: valid")


HOST_HELP = "multi-host: the host of config.yaml's `hosts:` to act for (default: this machine's hostname)"


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "out": "output directory (default: _build)", "test_cluster": "include the test-cluster runner (profile `test`)", "host": HOST_HELP})
def generate(c, config="config.yaml", env_file=None, out="_build", test_cluster=True, host=None):
    """Validate, choose overlays, merge them with `docker compose config` into _build/compose.yaml."""
    loaded = _loaded(config, env_file)
    try:
        plan = plan_for(loaded, test_cluster=test_cluster, host=host)
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


def _stack(config, env_file, out="_build", generate_first=False, host=None):
    loaded = _loaded(config, env_file)
    build_dir = _out_dir(out)
    if generate_first:
        try:
            compose.generate(plan_for(loaded, host=host), build_dir)
        except PlatformError as exc:
            raise _fail(exc) from None
    elif not (build_dir / "compose.yaml").exists():
        raise Exit(f"{build_dir / 'compose.yaml'} does not exist: run `inv generate` or `inv up` first", code=1)
    return stack_mod.Stack(loaded.cfg, build_dir)


OUT_HELP = "directory of the generated project (default: _build)"


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "out": OUT_HELP, "timeout": "seconds to wait for every service to become healthy", "build": "rebuild the MLflow and Marimo images", "host": HOST_HELP})
def up(c, config="config.yaml", env_file=None, out="_build", timeout=600, build=False, host=None):
    """Generate, preflight, start the stack and wait until every service is healthy."""
    st = _stack(config, env_file, out, generate_first=True, host=host)
    try:
        rows = stack_mod.bring_up(st, timeout=float(timeout), build=build)
    except PlatformError as exc:
        raise _fail(exc) from None
    print(st.table(rows))


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "out": OUT_HELP, "volumes": "also delete every volume (MLflow runs, Postgres, Redis, notebooks); needs --yes", "yes": "confirm --volumes"})
def down(c, config="config.yaml", env_file=None, out="_build", volumes=False, yes=False):
    """Stop and remove the stack's containers; volumes are kept unless --volumes --yes."""
    try:
        # Without a generated project (a fresh checkout, a new --out) generate one to know the stack.
        _stack(config, env_file, out, generate_first=not (_out_dir(out) / "compose.yaml").exists()).down(volumes=volumes, yes=yes)
    except PlatformError as exc:
        raise _fail(exc) from None


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "out": OUT_HELP})
def ps(c, config="config.yaml", env_file=None, out="_build"):
    """List the stack's containers with state and health."""
    st = _stack(config, env_file, out)
    try:
        print(st.table(st.services()))
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
    print(stack_mod.format_status(report))
    if not report["ray_nodes"] or report["head"] is None:
        raise Exit("no live Ray head", code=1)


@task(name="test-cluster", help={"config": CONFIG_HELP, "env_file": ENV_HELP, "out": OUT_HELP})
def test_cluster(c, config="config.yaml", env_file=None, out="_build"):
    """Run the test-cluster container against the running stack; the exit code says pass or fail."""
    st = _stack(config, env_file, out)
    code = st.test_cluster()
    if code:
        raise Exit("test-cluster failed", code=code)


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "host": HOST_HELP, "remove": "print the commands that remove the rules instead"})
def firewall(c, config="config.yaml", env_file=None, host=None, remove=False):
    """Print the iptables script (DOCKER-USER and INPUT) that admits only the other hosts; pipe it to `sudo sh`."""
    from cslr import multihost

    if remove:
        print(multihost.firewall_removal())
        return
    loaded = _loaded(config, env_file)
    try:
        print(multihost.firewall_rules(loaded.cfg, host))
    except KeyError as exc:
        raise Exit(str(exc.args[0]), code=2) from None
