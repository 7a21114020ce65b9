"""Invoke tasks of the CSLR Experiment Platform. Thin: each calls the `cslr` package.

    inv init | validate | generate | up | down | ps | logs | status | test-cluster | schema
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Exit, task

from cslr import compose, config, schema_docs
from cslr.errors import PlatformError
from cslr.init import init as init_files
from cslr.project import load_validated, plan_for, relative, shell_join

ROOT = Path(__file__).resolve().parent
CONFIG_HELP = "config.yaml to read (default: ./config.yaml)"
ENV_HELP = ".env to read (default: the .env beside the config file)"


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


@task(help={"config": CONFIG_HELP, "env_file": ENV_HELP, "out": "output directory (default: _build)", "test_cluster": "include the test-cluster runner (profile `test`)"})
def generate(c, config="config.yaml", env_file=None, out="_build", test_cluster=True):
    """Validate, choose overlays, merge them with `docker compose config` into _build/compose.yaml."""
    loaded = _loaded(config, env_file)
    plan = plan_for(loaded, test_cluster=test_cluster)
    out_dir = ROOT / out if not Path(out).is_absolute() else Path(out)
    try:
        written = compose.generate(plan, out_dir)
    except PlatformError as exc:
        raise _fail(exc) from None
    print(loaded.gpu.describe())
    print("overlays: " + (", ".join(str(f) for f in plan.files[1:]) or "none"))
    print("profiles: " + (", ".join(plan.profiles) or "none"))
    for path in written:
        print(f"wrote {relative(path, ROOT)} (mode 0600)")
    env_file_rel = relative(out_dir / ".env", ROOT)
    print("equivalent: " + shell_join(plan.command(["config"], env_file=env_file_rel)))


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
