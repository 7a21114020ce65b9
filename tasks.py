"""Invoke tasks of the CSLR Experiment Platform. Thin: each calls the `cslr` package.

    inv init | validate | generate | up | down | ps | logs SERVICE | status | doctor | backup | restore ARCHIVE | version | test-cluster | schema | firewall | export k8s | submit | jobs

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

from cslr import config, effective, lifecycle, project, schema_docs
from cslr import report as report_mod
from cslr.errors import PlatformError
from cslr.init import init as init_files
from cslr.project import load_validated, relative

ROOT = Path(__file__).resolve().parent
_config_mod = config  # the `config` module, reachable inside tasks whose --config parameter shadows it
CONFIG, OUT = "config.yaml", "_build"  # the defaults of --config and --out, for every task
CONFIG_HELP = "config.yaml to read (default: ./config.yaml)"
ENV_HELP = ".env to read (default: the .env beside the config file)"
OUT_HELP = "directory of the generated project (default: _build)"
HOST_HELP = "multi-host: the host of config.yaml's `hosts:` to act for (default: this machine's hostname)"
JSON_HELP = "print JSON (for scripts) instead of the table"
COMMON_HELP = {"config": CONFIG_HELP, "env_file": ENV_HELP, "out": OUT_HELP, "host": HOST_HELP, "json": JSON_HELP}
# The only short flags. -h stays Invoke's --help; -H is --host.
SHORT_FLAGS = {"config": "c", "env_file": "e", "out": "o", "host": "H", "follow": "f", "tail": "n", "build": "b", "volumes": "v", "yes": "y"}


class CliTask(Task):
    """A task whose short flags come from SHORT_FLAGS only (Invoke would pick first free letters)."""

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        if name in SHORT_FLAGS:
            opts["names"] = [*opts["names"], SHORT_FLAGS[name]]
        if isinstance(default, int) and not isinstance(default, bool):
            opts["kind"] = str  # parsed by `cli` (exit 2 with a message), not by Invoke (a traceback)
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
        positional = list(kwargs.get("positional", ()))
        for name, param in params.items():
            default = param.default
            if name in helps and default not in (None, inspect.Parameter.empty) and not isinstance(default, bool) and "default" not in helps[name]:
                helps[name] += f" (default: {default})"
            if name in positional:
                helps[name] = f"{name.upper()}, given without the flag: {helps.get(name, '')}"

        @functools.wraps(body)
        def run(c, *args, **kw):
            # Invoke hands `-h` after a task with a positional to that positional: it is still help.
            if any(kw.get(name) in ("-h", "--help") for name in kwargs.get("positional", ())):
                return _print_help(kwargs.get("name") or body.__name__)
            _refuse_core_config(c, kwargs.get("name") or body.__name__)
            for name, param in params.items():
                if isinstance(param.default, int) and not isinstance(param.default, bool) and isinstance(kw.get(name), str):
                    kw[name] = _integer_flag(name, kw[name])
            try:
                return body(c, *args, **kw)
            except PlatformError as exc:
                raise _fail(exc) from None

        if positional:  # Invoke's usage line does not show positionals: the docstring does
            task_name = kwargs.get("name") or body.__name__.replace("_", "-")
            run.__doc__ = f"{run.__doc__}\n\nUsage: inv {task_name} {' '.join(p.upper() for p in positional)} [--options]"
        return task(run, klass=CliTask, auto_shortflags=False, help=helps, **kwargs)

    return wrap


def _print_help(name: str) -> None:
    from invoke import Collection, Program

    Program(namespace=Collection.from_module(sys.modules[__name__]), binary="inv").run(["inv", "--help", name], exit=False)


def _refuse_core_config(c, name: str) -> None:
    """`inv --config F TASK` (or `-f F`) is Invoke's own option: it reads F as Invoke's settings and
    the task would silently use ./config.yaml. Refused, saying where the flag belongs."""
    runtime = getattr(c.config, "_runtime_path", None)
    if runtime:
        raise Exit(
            f"inv: `--config {runtime}` (or `-f`) before the task name is Invoke's own option: it read {runtime} as Invoke's settings, "
            f"not as the platform's config. Put it after the task: inv {name.replace('_', '-')} --config {runtime}",
            code=2,
        )


def _integer_flag(name: str, text: str) -> int:
    flag = "--" + name.replace("_", "-")
    value = text.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 9):
        raise Exit(f"inv: {flag}: found {text!r}, expected a whole number >= 0", code=2)
    return int(value)


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
def validate(c, config=CONFIG, env_file=None, json=False):
    """Validate config.yaml, .env and the environment; report every problem (exit 2 on errors)."""
    if not json:
        loaded = _loaded(config, env_file)
        print(loaded.gpu.describe())
        print(f"{loaded.cfg.config_path}: valid")
        return
    from cslr.errors import ConfigError, ConfigSyntaxError

    def problem(p):
        return {"location": str(p.location), "path": p.path, "message": p.message, "severity": p.severity}

    try:
        loaded = load_validated(config, env_file)
    except ConfigError as exc:
        _print_json({"config": str(config), "valid": False, "problems": [problem(p) for p in exc.problems]})
        raise Exit(code=exc.exit_code) from None
    except ConfigSyntaxError as exc:
        _print_json(
            {
                "config": str(config),
                "valid": False,
                "problems": [{"location": str(exc.location), "path": "$", "message": f"{exc.kind}: {exc.message}", "severity": "error"}],
            }
        )
        raise Exit(code=exc.exit_code) from None
    _print_json({"config": str(loaded.cfg.config_path), "valid": True, "gpu": loaded.gpu.describe(), "problems": [problem(p) for p in loaded.warnings]})


def _print_json(value) -> None:
    import json as json_mod

    print(json_mod.dumps(value, indent=2, sort_keys=True, default=str))


@cli(name="config")
def show_config(c, config=CONFIG, env_file=None, json=False):
    """Show every setting's effective value, its origin (schema default, config.yaml:LINE, .env:LINE, environment) and what is wrong with it; secrets masked; exit 2 when a value is invalid."""
    import json as json_mod

    from cslr.errors import ConfigError

    try:
        cfg = _config_mod.load(config, env_file)
        problems = load_validated(config, env_file).warnings
    except ConfigError as exc:
        problems = exc.problems
    except PlatformError as exc:
        raise _fail(exc) from None
    items = effective.rows(cfg, problems)
    print(json_mod.dumps(effective.as_json(items), indent=2) if json else effective.table(items))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise Exit(f"{len(errors)} error(s) in the configuration: inv validate lists them with file and line", code=2)


@cli(help={"test_cluster": "include the test-cluster runner (profile `test`)"})
def generate(c, config=CONFIG, env_file=None, out=OUT, test_cluster=True, host=None):
    """Validate, choose overlays, merge them with `docker compose config` into _build/compose.yaml."""
    gen = project.generate(_loaded(config, env_file), _out_dir(out), host=host, test_cluster=test_cluster)
    print(f"{gen.image_source_why} -> {gen.image_source}")
    print("\n".join(project.generation_report(gen.plan, gen.written, gen.build_dir, ROOT)))


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


def _stack(config, env_file, out=OUT):
    """The Stack of the generated project in --out (the tasks that act on a running stack)."""
    return project.existing_stack(_loaded(config, env_file), _out_dir(out))


@cli(
    help={
        "timeout": "seconds to wait for every service to become healthy",
        "build": "rebuild the project's images even when their tags exist",
        "show_secrets": "print the Marimo and Ray dashboard tokens in full in the table",
        "firewall_elsewhere": "multi-host: start although the rules of `inv firewall` are not loaded, because another firewall admits only the other hosts (printed as a warning)",
    }
)
def up(c, config=CONFIG, env_file=None, out=OUT, timeout=600, build=False, host=None, show_secrets=False, firewall_elsewhere=False):
    """Generate, preflight, make the images present, start the stack and wait until it is healthy."""
    # Whose stack and data: refused (exit 2) before anything, even the generated project, changes.
    loaded = _loaded(config, env_file)
    for line in lifecycle.claim_before_generate(loaded.cfg, _out_dir(out)):
        print(line)
    gen = project.generate(loaded, _out_dir(out), host=host, probe_pull=True)
    print(gen.image_source_why)
    st = gen.stack()
    rows = lifecycle.bring_up(st, lifecycle.UpOptions(timeout=float(timeout), build=build, claimed=True, firewall_elsewhere=firewall_elsewhere))
    print(st.table(rows, show_secrets=show_secrets))


@cli(help={"dest": "folder to download into (default: wheelhouse/)", "force": "download again even when complete"})
def wheelhouse(c, config=CONFIG, env_file=None, dest=None, force=False):
    """Download every wheel the images' pip layers need (bases, project images, experiment)."""
    from cslr import wheelhouse as wh

    # Needs the image settings only: no secrets, so it runs before `inv init` (make bases, CI).
    print(wh.ensure(_config_mod.load(config, env_file), Path(dest) if dest else wh.DEFAULT_DIR, force=force))


@cli(
    help={
        "volumes": "also delete every volume (MLflow runs, Postgres, Redis; the notebooks and data folders on the host stay); needs --yes",
        "yes": "confirm --volumes",
    }
)
def down(c, config=CONFIG, env_file=None, out=OUT, volumes=False, yes=False):
    """Stop and remove the stack's containers; volumes are kept unless --volumes --yes."""
    st = project.stack_for_down(_loaded(config, env_file), _out_dir(out))
    if st is None:
        print("nothing to stop: no generated project and no container or volume of this project")
        return
    st.claim("down")
    st.down(volumes=volumes, yes=yes)


@cli(help={"show_secrets": "print the Marimo and Ray dashboard tokens in full"})
def ps(c, config=CONFIG, env_file=None, out=OUT, show_secrets=False, json=False):
    """List the stack's containers with state and health."""
    from cslr import __version__

    st = _stack(config, env_file, out)
    st.claim("ps")
    rows = st.services()
    if json:
        urls = report_mod.service_urls(st.cfg, show_secrets)
        services = [{"service": r["Service"], "state": r.get("State"), "health": r.get("Health") or None, "url": urls.get(r["Service"], "")} for r in rows]
        _print_json({"platform_version": __version__, "project": st.project, "services": sorted(services, key=lambda r: r["service"])})
        return
    print(f"cslr-platform {__version__} · project {st.project}")
    print(st.table(rows, show_secrets=show_secrets))


@cli(
    positional=["service"],
    help={
        "service": "the service, e.g. ray-cpu, a comma-separated list, or `all`",
        "follow": "keep following the output",
        "tail": "lines per service to show first",
        "since": "only lines since a duration ago (10m, 2h) or a time (2026-12-06T09:00:00Z)",
    },
)
def logs(c, service, follow=False, tail=200, since=None, config=CONFIG, env_file=None, out=OUT):
    """The logs of one service (`inv logs ray-cpu`), several (`ray-cpu,health`) or all (`inv logs all`), in time order with timestamps."""
    from cslr import compose
    from cslr import logs as logs_mod

    st = _stack(config, env_file, out)
    st.claim("logs")
    names = [] if service == "all" else [s.strip() for s in service.split(",") if s.strip()]
    args = ["logs", "--no-color", "--timestamps", "--tail", str(tail)] + (["--since", logs_mod.check_since(since)] if since else [])
    if follow:
        code = logs_mod.follow(st.command(args + ["--follow", *names]), compose.subprocess_env())
    else:
        proc = st.compose(args + names)
        print("\n".join(logs_mod.merge(proc.stdout)))
        sys.stderr.write(proc.stderr)
        code = proc.returncode
    if code:
        raise Exit(code=code)


@cli()
def status(c, config=CONFIG, env_file=None, out=OUT, json=False):
    """Ray nodes (hostname, IP, role, CPUs, GPUs, alive), the head, MLflow and Redis reachability, the custom services' state."""
    report = _stack(config, env_file, out).status()
    if json:
        _print_json({**report, "services": {k: {"state": v.get("State"), "health": v.get("Health") or None} for k, v in report["services"].items()}})
    else:
        print(report_mod.format_status(report))
    failure = report_mod.status_failure(report)
    if failure:
        raise Exit(failure, code=1)


@cli()
def doctor(c, config=CONFIG, env_file=None, out=OUT, json=False):
    """The troubleshooting flow as checks: config, engine, Compose, memory, disk, services, ports, head; exit 1 on a failure."""
    from cslr import doctor as doc

    build_dir = _out_dir(out)

    def stack_for(loaded):
        return project.existing_stack(loaded, build_dir) if (build_dir / "compose.yaml").exists() else None

    def data_check(loaded):
        return lifecycle.claim_before_generate(loaded.cfg, build_dir)

    checks = doc.run(lambda: load_validated(config, env_file), stack_for, here=str(Path(config).resolve().parent), data_check=data_check)
    print(doc.format_json(checks) if json else doc.format_text(checks))
    if doc.exit_code(checks):
        raise Exit(code=doc.exit_code(checks))


@cli(help={"dest": "folder for the archive (default: backups/ beside config.yaml)", "with_env": "also store .env (its secrets) in the archive"})
def backup(c, config=CONFIG, env_file=None, out=OUT, dest=None, with_env=False):
    """Archive MLflow's database (pg_dump) and artifacts, the notebooks and config.yaml (mode 0600; .env only with --with-env)."""
    from cslr import backup as bk

    cfg_path = Path(config).resolve()
    env_path = Path(env_file) if env_file else cfg_path.parent / ".env"
    bk.backup(_stack(config, env_file, out), Path(dest) if dest else cfg_path.parent / "backups", cfg_path, env_path, with_env=with_env)


@cli(positional=["archive"], help={"archive": "a file written by `inv backup`", "yes": "replace a stack that is not empty"})
def restore(c, archive, config=CONFIG, env_file=None, out=OUT, yes=False):
    """Restore a backup onto the running stack (empty, or any with --yes) and verify it against the archive."""
    from cslr import backup as bk

    bk.restore(_stack(config, env_file, out), Path(archive), yes=yes)


@cli()
def version(c):
    """The platform's version (also in pyproject.toml and CHANGELOG.md)."""
    from cslr import __version__

    print(f"cslr-platform {__version__}")


@cli(name="test-cluster")
def test_cluster(c, config=CONFIG, env_file=None, out=OUT):
    """Run the test-cluster container against the running stack; the exit code says pass or fail."""
    code = _stack(config, env_file, out).test_cluster()
    if code:
        raise Exit("test-cluster failed", code=code)


@cli(
    help={
        "remove": "print the commands that remove the rules (and the --persist unit) instead",
        "persist": "print a script that installs the rules as a systemd unit applied at every boot, before Docker, and applies them now",
    }
)
def firewall(c, config=CONFIG, env_file=None, host=None, remove=False, persist=False):
    """Print the iptables script (DOCKER-USER and INPUT) that admits only the other hosts; pipe it to `sudo sh`."""
    from cslr import multihost

    if remove and persist:
        raise Exit("give one of --remove and --persist", code=2)
    if remove:
        print(multihost.firewall_removal())
        return
    cfg = _loaded(config, env_file).cfg
    print(multihost.firewall_persist(cfg, host) if persist else multihost.firewall_rules(cfg, host))


# ----------------------------------------------------------------------------- Ray jobs


def _job_command(c) -> str:
    # Invoke joins what follows `--` with spaces; the original argv keeps each argument's quoting.
    import shlex

    return shlex.join(sys.argv[sys.argv.index("--") + 1 :]) if "--" in sys.argv else c.remainder


@cli(
    help={
        "wait": "follow the job's logs until it ends, through a head failover, and submit it again after a node loss (the default, as `ray job submit`); exit with its code (SUCCEEDED 0, FAILED 1, STOPPED 130). --no-wait: return once submitted (no retry follows it)",
        "name": "submission id of the first attempt, and the run's id (default: cslr-DATE-TIME-RANDOM)",
        "working_dir": "folder uploaded as the job's working dir (default: the current folder)",
        "off_head": "insist on the driver off the head (refused when no other node is alive); the default already puts it there when it can",
        "on_head": "leave the job's driver on the head (Ray's default): it then dies with the head",
        "retries": "submit again this often when the job ends because a node died (default 2; 0: never; none with --no-wait)",
    }
)
def submit(c, wait=True, name=None, working_dir=".", off_head=False, on_head=False, retries=None, config=CONFIG, env_file=None):
    """Submit a Ray job to the current head and follow it: inv submit [--no-wait] [--name N] [--retries N] [--on-head|--off-head] -- python train.py ..."""
    from cslr import jobs as jobs_mod

    if off_head and on_head:
        raise Exit("inv: give one of --off-head and --on-head", code=2)
    try:
        count = jobs_mod.parse_retries(retries)
    except ValueError as exc:
        raise Exit(f"inv: {exc}", code=2) from None
    placement = "off-head" if off_head else "head" if on_head else "auto"
    code = jobs_mod.submit(_loaded(config, env_file).cfg, _job_command(c), Path(working_dir), name=name, follow=wait, placement=placement, retries=count)
    if code:
        raise Exit(code=code)


@cli(help={"logs": "show this job's output", "stop": "stop this job"})
def jobs(c, logs=None, stop=None, config=CONFIG, env_file=None, json=False):
    """Ray jobs of the cluster: inv jobs (list, with each retry's attempt and the checkpoint it resumed from) | inv jobs --logs ID | inv jobs --stop ID."""
    from cslr import jobs as jobs_mod

    loaded = _loaded(config, env_file)
    if logs and stop:
        raise Exit("give one of --logs ID and --stop ID", code=2)
    client = jobs_mod.client_for(loaded.cfg)
    if logs:
        print(client.logs(logs), end="")
    elif stop:
        print(f"{stop}: {'stop requested' if client.stop(stop) else 'not running (nothing to stop)'}")
    elif json:
        _print_json(jobs_mod.list_json(client))
    else:
        print(jobs_mod.list_jobs(client))


# ----------------------------------------------------------------------------- before Invoke parses


def submit_without_separator(argv: list[str], task_names: set[str]) -> str | None:
    """`inv submit python train.py`: Invoke would read `python` as another task and say only "No
    idea what 'python' is!". The message that says how to write it (exit 2), or None."""
    args = list(argv[1:])
    if "--" in args:
        args = args[: args.index("--")]
    if "submit" not in args:
        return None
    params = inspect.signature(submit.body).parameters
    takes_value = set()
    for name, param in params.items():
        if name != "c" and not isinstance(param.default, bool):
            takes_value.add("--" + name.replace("_", "-"))
            if name in SHORT_FLAGS:
                takes_value.add("-" + SHORT_FLAGS[name])
    rest = args[args.index("submit") + 1 :]
    i = 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("-"):
            i += 2 if token in takes_value else 1
            continue
        if token in task_names:
            return None  # another task follows
        import shlex

        spelled = shlex.join(["inv", "submit", *rest[:i], "--", *rest[i:]])
        return f"inv submit: found {token!r} after the task, which Invoke would read as another task. Put the job's command after `--`: {spelled}"
    return None


def _run_by_invoke(argv: list[str]) -> bool:
    first = Path(argv[0]) if argv else Path()
    return first.name in ("inv", "invoke") or first.parts[-2:] == ("invoke", "__main__.py")


def _check_command_line(argv: list[str]) -> None:
    if not _run_by_invoke(argv):
        return  # imported by a test or another program: nothing to check
    from invoke import Collection

    message = submit_without_separator(argv, set(Collection.from_module(sys.modules[__name__]).task_names))
    if message:
        print(message, file=sys.stderr)
        raise SystemExit(2)


_check_command_line(sys.argv)
