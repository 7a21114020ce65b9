"""The Invoke tasks as a user runs them: exit codes, messages, atomic and deterministic output."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SECRETS

INV = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
pytestmark = pytest.mark.contract  # `generate` runs the real Compose binary


def inv(*args, cwd, env=None):
    base = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith(("RAY_", "CSLR_", "HEAD_"))}
    base["PATH"] = f"{tmp_bin(cwd)}{os.pathsep}{base['PATH']}"
    return subprocess.run([*INV, *args], cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=120)


def tmp_bin(cwd: Path) -> Path:
    # No nvidia-smi on this machine; an empty bin dir keeps the outcome independent of the host.
    path = Path(cwd) / "bin"
    path.mkdir(exist_ok=True)
    return path


def test_validate_reports_every_error_and_exits_2(project, tmp_path):
    project("gpu: maybe\nnetwork:\n  subnett: x\n")
    out = inv("validate", cwd=tmp_path)
    assert out.returncode == 2
    assert "config.yaml:1:6: $.gpu (CSLR_GPU): found 'maybe', expected one of: auto, on, off" in out.stderr
    assert "config.yaml:3:3: $.network.subnett: unknown key 'subnett' (did you mean 'subnet'?)" in out.stderr
    assert "2 error(s)" in out.stderr


def test_validate_syntax_error_exit_2(project, tmp_path):
    project("gpu: [\n")
    out = inv("validate", cwd=tmp_path)
    assert out.returncode == 2 and "config.yaml:2:1: syntax error" in out.stderr


def test_validate_ok_says_what_it_detected(project, tmp_path):
    project("{}\n")
    out = inv("validate", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "gpu: auto; detected: none (nvidia-smi not found); GPU node off" in out.stdout


def test_generate_is_deterministic_and_private(project, tmp_path):
    project("{}\n")
    first = inv("generate", "--out", str(tmp_path / "_build"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    built = tmp_path / "_build" / "compose.yaml"
    text1 = built.read_bytes()
    second = inv("generate", "--out", str(tmp_path / "_build"), cwd=tmp_path)
    assert second.returncode == 0 and built.read_bytes() == text1
    assert stat.S_IMODE(built.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "_build" / ".env").stat().st_mode) == 0o600
    assert (
        f"equivalent: docker compose --env-file {tmp_path}/_build/.env --profile redis --profile mlflow --profile marimo --profile monitoring --profile grafana --profile redis-exporter --profile postgres-exporter --profile test -f compose/compose.yaml -f overlays/test-cluster.yaml -f {tmp_path}/_build/telemetry.yaml config"
        in first.stdout
    )
    assert "overlays: overlays/test-cluster.yaml, _build/telemetry.yaml" in first.stdout
    assert sorted(p.name for p in (tmp_path / "_build").iterdir()) == [".env", "compose.yaml", "telemetry.yaml"]


def test_generate_writes_nothing_on_invalid_config(project, tmp_path):
    project("services:\n  mlflow: {port: 0}\n")
    out = inv("generate", "--out", str(tmp_path / "_build"), cwd=tmp_path)
    assert out.returncode == 2
    assert not (tmp_path / "_build").exists()


def test_generate_keeps_old_output_when_compose_refuses(project, tmp_path):
    project("{}\n")
    assert inv("generate", "--out", str(tmp_path / "_build"), cwd=tmp_path).returncode == 0
    before = (tmp_path / "_build" / "compose.yaml").read_bytes()
    # Compose itself failing (a broken install) must not clobber the last good project.
    out = inv("generate", "--out", str(tmp_path / "_build"), cwd=tmp_path, env={"CSLR_COMPOSE_BIN": "/bin/false"})
    assert out.returncode == 1 and "docker compose config refused the project" in out.stderr
    assert (tmp_path / "_build" / "compose.yaml").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "_build").iterdir()) == [".env", "compose.yaml", "telemetry.yaml"]


def test_gpu_detected_by_fake_nvidia_smi_adds_the_overlay(project, tmp_path):
    # The fake stands in for the NVIDIA driver's nvidia-smi on a GPU host.
    project("{}\n")
    script = tmp_bin(tmp_path) / "nvidia-smi"
    script.write_text("#!/bin/sh\necho '0, NVIDIA L4, 23034 MiB'\n")
    script.chmod(0o755)
    out = inv("generate", "--out", str(tmp_path / "_build"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "overlays: overlays/gpu.yaml, overlays/test-cluster.yaml" in out.stdout
    text = (tmp_path / "_build" / "compose.yaml").read_text()
    assert "driver: nvidia" in text and 'RAY_NUM_GPUS: "1"' in text


def test_init_then_validate(tmp_path):
    out = inv("init", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600
    again = inv("init", cwd=tmp_path)
    assert "kept" in again.stdout
    assert inv("validate", cwd=tmp_path).returncode == 0


def test_schema_prints_the_schema(tmp_path):
    out = inv("schema", cwd=tmp_path)
    assert out.returncode == 0 and '"$schema": "https://json-schema.org/draft/2020-12/schema"' in out.stdout


# ------------------------------------------------------------------------------ command-line conventions


def _program():
    from invoke import Collection, Program

    import tasks

    return Program(namespace=Collection.from_module(tasks), binary="inv")


def _task_names():
    from invoke import Collection

    import tasks

    return sorted(Collection.from_module(tasks).task_names)


def test_dash_h_is_help_in_every_task(capsys):
    names = _task_names()
    assert {"up", "logs", "generate", "firewall", "init", "down"} <= set(names)
    for name in names:
        _program().run(["inv", name, "-h"], exit=False)
        out = capsys.readouterr().out
        assert out.startswith("Usage: inv") and f" {name} " in out.splitlines()[0], (name, out[:200])


def test_each_short_flag_means_one_option_in_every_task():
    from invoke import Collection

    import tasks

    coll = Collection.from_module(tasks)
    meaning: dict[str, set] = {}
    for name in coll.task_names:
        for arg in coll[name].get_arguments():
            for short in (n for n in arg.names if len(n) == 1):
                meaning.setdefault(short, set()).add(arg.name)
    assert "h" not in meaning  # -h is help
    assert {s: names for s, names in meaning.items() if len(names) > 1} == {}
    assert meaning["H"] == {"host"} and meaning["c"] == {"config"} and meaning["n"] == {"tail"}


def test_logs_takes_the_service_positionally(project, tmp_path):
    project("{}\n")
    assert inv("generate", "--out", str(tmp_path / "_build"), cwd=tmp_path).returncode == 0
    # The fake stands in for `docker compose` against a running stack: it records its arguments.
    fake = tmp_bin(tmp_path) / "fake-compose"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/argv\n')
    fake.chmod(0o755)
    env = {"CSLR_COMPOSE_BIN": str(fake)}
    out = inv("logs", "ray-cpu", "-n", "5", "--out", str(tmp_path / "_build"), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "argv").read_text().split()[-6:] == ["logs", "--no-color", "--timestamps", "--tail", "5", "ray-cpu"]
    out = inv("logs", "all", "-f", "--since", "10m", "--out", str(tmp_path / "_build"), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "argv").read_text().split()[-8:] == ["logs", "--no-color", "--timestamps", "--tail", "200", "--since", "10m", "--follow"]
    out = inv("logs", "ray-cpu,health", "--out", str(tmp_path / "_build"), cwd=tmp_path, env=env)
    assert (tmp_path / "argv").read_text().split()[-2:] == ["ray-cpu", "health"]
    out = inv("logs", "all", "--since", "yesterday", "--out", str(tmp_path / "_build"), cwd=tmp_path, env=env)
    assert out.returncode == 2 and "expected a duration such as 10m" in out.stderr
    out = inv("logs", cwd=tmp_path, env=env)
    assert out.returncode != 0 and "did not receive required positional arguments: 'service'" in out.stderr


def test_a_platform_error_is_a_message_and_exit_code_not_a_traceback(tmp_path):
    (tmp_path / ".env").write_text("BROKEN LINE\n")
    out = inv("init", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr and ".env:1:1" in out.stderr


def test_firewall_prints_the_script_for_the_named_host(project, tmp_path):
    project((ROOT / "tests" / "contract" / "multihost-config.yaml").read_text())
    out = inv("firewall", "-H", "host-b", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("#!/bin/sh\n# Firewall of host-b (192.168.1.11)")
    assert "else fwd='-I DOCKER-USER -j CSLR-FW'; fi" in out.stdout and out.stdout.rstrip().endswith("| iptables-restore -w --noflush")
    unknown = inv("firewall", "-H", "host-z", cwd=tmp_path)
    assert unknown.returncode == 2 and "host 'host-z' is not in config.yaml's hosts (host-a, host-b)" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    removal = inv("firewall", "--remove", cwd=tmp_path)
    assert removal.returncode == 0 and "iptables -w -X CSLR-FW-INPUT" in removal.stdout
    persist = inv("firewall", "-H", "host-b", "--persist", cwd=tmp_path)
    assert persist.returncode == 0 and "cat > /etc/systemd/system/cslr-fw.service.tmp <<'CSLR_FW_UNIT'" in persist.stdout
    assert out.stdout.rstrip() in persist.stdout  # the same rules, written to /etc/cslr/cslr-fw.sh
    both = inv("firewall", "--remove", "--persist", cwd=tmp_path)
    assert both.returncode == 2 and "one of --remove and --persist" in both.stderr


def test_validate_refuses_an_ipv6_bind_address_on_a_multi_host_config(project, tmp_path):
    text = (ROOT / "tests" / "contract" / "multihost-config.yaml").read_text().replace("bind_address: 0.0.0.0", 'bind_address: "::"')
    project(text)
    out = inv("validate", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "config.yaml:4:17: $.network.bind_address" in out.stderr and "an IPv6 address, on a multi-host config" in out.stderr


def test_jobs_and_submit_say_clearly_when_the_stack_is_not_up(project, tmp_path):
    import socket

    with socket.socket() as s:  # a real closed port stands for a stack that is not running
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    project(f"services:\n  health: {{port: {port}}}\n")
    for args in (["jobs"], ["jobs", "--logs", "raysubmit_x"], ["submit", "--", "python", "train.py"]):
        out = inv(*args, cwd=tmp_path)
        assert out.returncode == 1 and f"the health service at http://127.0.0.1:{port}/ does not answer" in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    both = inv("jobs", "--logs", "a", "--stop", "b", cwd=tmp_path)
    assert both.returncode == 2 and "give one of --logs ID and --stop ID" in both.stderr


# Issue 19: no spelling of "use this config" may silently use another; numbers are checked.


def test_invoke_core_config_before_the_task_is_refused_not_silently_ignored(project, tmp_path):
    project("{}\n")
    (tmp_path / "other.yaml").write_text("gpu: maybe\n")
    for flag in ("--config", "-f"):
        out = inv(flag, "other.yaml", "validate", cwd=tmp_path)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "Put it after the task: inv validate --config other.yaml" in out.stderr
        assert "valid" not in out.stdout
    after = inv("validate", "--config", "other.yaml", cwd=tmp_path)  # the right spelling reads it
    assert after.returncode == 2 and "found 'maybe'" in after.stderr


@pytest.mark.parametrize("args", [("up", "--timeout", "abc"), ("up", "--timeout", "-5"), ("logs", "mlflow", "-n", "abc"), ("logs", "mlflow", "--tail", "1e3")])
def test_numeric_flags_are_checked_with_a_message(project, tmp_path, args):
    project("{}\n")
    out = inv(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "expected a whole number >= 0" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (("--retries", "x"), "inv: --retries: found 'x', expected a whole number from 0 to 100"),
        (("--retries", "-1"), "inv: --retries: found '-1', expected a whole number from 0 to 100"),
        (("--retries", "101"), "inv: --retries: found '101', expected a whole number from 0 to 100"),
        (("--on-head", "--off-head"), "inv: give one of --off-head and --on-head"),
    ],
)
def test_submit_refuses_bad_survival_flags_before_touching_the_cluster(project, tmp_path, args, message):
    project("{}\n")
    out = inv("submit", *args, "--", "python", "train.py", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == message and "Traceback" not in out.stderr, out.stdout + out.stderr


def test_doctor_json_lists_every_check_and_its_exit_code_follows_failures(project, tmp_path):
    project("gpu: maybe\n")
    out = inv("doctor", "--json", "--out", str(tmp_path / "_build"), cwd=tmp_path)
    checks = json.loads(out.stdout)
    assert checks[0]["name"] == "config" and checks[0]["status"] == "fail" and "maybe" in checks[0]["detail"]
    assert out.returncode == 1 and "Traceback" not in out.stderr


def test_validate_json_lists_every_problem_with_its_location(project, tmp_path):
    project("gpu: maybe\nnetwork:\n  subnett: x\n")
    out = inv("validate", "--json", cwd=tmp_path)
    assert out.returncode == 2
    got = json.loads(out.stdout)
    assert got["valid"] is False
    assert {(p["location"], p["path"].split(" ")[0]) for p in got["problems"]} >= {("config.yaml:1:6", "$.gpu"), ("config.yaml:3:3", "$.network.subnett")}
    good_dir = tmp_path / "good"
    good_dir.mkdir()
    from tests.conftest import write_project

    write_project(good_dir, "{}\n")
    ok = inv("validate", "--json", cwd=good_dir)
    assert ok.returncode == 0 and json.loads(ok.stdout)["valid"] is True


def test_config_json_marks_invalid_values_and_exits_2(project, tmp_path):
    project('services:\n  mlflow: {port: "five"}\n')
    out = inv("config", "--json", cwd=tmp_path)
    assert out.returncode == 2
    rows = {r["setting"]: r for r in json.loads(out.stdout)}
    assert rows["$.services.mlflow.port (MLFLOW_HOST_PORT)"]["problem"].startswith("invalid: found 'five'")
    assert all(secret not in out.stdout for secret in SECRETS.values())


def test_host_on_a_single_host_config_is_refused_not_ignored(project, tmp_path):
    project("{}\n")
    out = inv("generate", "--host", "foo", "--out", str(tmp_path / "_build"), cwd=tmp_path)
    assert out.returncode == 2 and "--host foo: this config.yaml has no `hosts:`" in out.stderr
    assert not (tmp_path / "_build" / "compose.yaml").exists()


def test_submit_without_the_separator_says_how_to_write_it(project, tmp_path):
    project("{}\n")
    out = inv("submit", "python", "train.py", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "inv submit -- python train.py" in out.stderr and "No idea" not in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("-c", "other.yaml", "validate"),  # Invoke's --collection
        ("--collection", "other.yaml", "validate"),
        ("-e", "other.yaml", "validate"),  # Invoke's --echo: other.yaml would be a task
        ("validate", "other.yaml"),  # validate takes no positional
    ],
)
def test_no_other_spelling_of_use_this_config_reads_config_yaml_and_says_valid(project, tmp_path, args):
    """Every spelling of "use other.yaml" either reads other.yaml or fails: never ./config.yaml and `valid`."""
    project("{}\n")  # a valid ./config.yaml that must not be what answers
    (tmp_path / "other.yaml").write_text("gpu: maybe\n")
    out = inv(*args, cwd=tmp_path)
    assert out.returncode != 0, out.stdout + out.stderr
    assert ": valid" not in out.stdout and "Traceback" not in out.stderr


@pytest.mark.parametrize("args", [("validate", "-c", "other.yaml"), ("validate", "--config=other.yaml"), ("config", "-c", "other.yaml")])
def test_the_tasks_own_config_flag_reads_that_file(project, tmp_path, args):
    project("{}\n")
    (tmp_path / "other.yaml").write_text("gpu: maybe\n")
    out = inv(*args, cwd=tmp_path)
    assert out.returncode == 2 and "maybe" in out.stdout + out.stderr
