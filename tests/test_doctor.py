"""`inv doctor` (cslr/doctor.py): each check on what the engine, the host and the health service
would say, and the whole flow on a fake stack (the engine is the boundary this tier lacks; the
e2e tier runs the real one)."""

from __future__ import annotations

import json
import subprocess

from hypothesis import given
from hypothesis import strategies as st

from cslr import doctor
from cslr.project import load_validated

GIB = doctor.GIB


def test_a_stopped_service_fails_with_its_last_error_line_and_the_fix():
    rows = [
        {"Service": "redis", "State": "running", "Health": "healthy"},
        {"Service": "mlflow", "State": "exited", "ExitCode": 1, "Health": ""},
        {"Service": "marimo", "State": "running", "Health": "unhealthy"},
    ]
    logs = {"mlflow": 'starting\nFATAL: password authentication failed for user "mlflow"\nretrying in 5 s\n', "marimo": ""}
    checks = {c.name: c for c in doctor.services(["redis", "mlflow", "marimo", "postgres"], rows, {"redis", "mlflow", "marimo"}, logs.get)}
    assert checks["service redis"].status == doctor.OK
    mlflow = checks["service mlflow"]
    assert mlflow.status == doctor.FAIL and "exited (exit 1)" in mlflow.detail
    assert 'password authentication failed for user "mlflow"' in mlflow.detail and mlflow.fix == "inv logs mlflow; then inv up"
    assert checks["service marimo"].status == doctor.FAIL and "unhealthy" in checks["service marimo"].detail
    assert checks["service postgres"].status == doctor.FAIL and checks["service postgres"].detail == "not created"


def test_a_port_taken_by_another_program_fails_naming_the_setting():
    published = [(("services", "mlflow", "port"), 5000), (("services", "redis", "port"), 6381)]
    taken = {5000}
    checks = doctor.ports("127.0.0.1", published, running={"redis"}, port_free=lambda host, port: port not in taken)
    assert [c.status for c in checks] == [doctor.FAIL]
    assert "127.0.0.1:5000 (services.mlflow.port, for mlflow) is taken by another program" in checks[0].detail
    assert "services.mlflow.port" in checks[0].fix
    # A port held by its own running service is fine.
    assert doctor.ports("127.0.0.1", published, running={"redis", "mlflow"}, port_free=lambda h, p: False)[0].status == doctor.OK


def test_head_agreement():
    status = {"known_head": "ray-cpu:6379"}
    agree = {
        "nodes": [
            {"hostname": "ray-cpu", "alive": True, "role": "head"},
            {"hostname": "ray-gpu", "alive": True, "role": "worker", "head_address": "ray-cpu:6379"},
        ]
    }
    assert doctor.head_agreement(status, agree).status == doctor.OK
    split = {"nodes": [{"hostname": "ray-gpu", "alive": True, "role": "worker", "head_address": "ray-gpu:6380"}]}
    got = doctor.head_agreement(status, split)
    assert got.status == doctor.FAIL and "ray-gpu follows ray-gpu:6380" in got.detail
    assert doctor.head_agreement({"known_head": None}, agree).status == doctor.FAIL
    assert doctor.head_agreement(None, None).status == doctor.FAIL


@given(st.text(max_size=300))
def test_hostile_meminfo_never_raises(text):
    assert doctor.memory(text).status in (doctor.OK, doctor.WARN)


def test_memory_and_disk_thresholds():
    assert doctor.memory("MemTotal: 100 kB\nMemAvailable: 1048576 kB\n").status == doctor.WARN  # 1 GiB
    assert doctor.memory("MemAvailable: 16777216 kB\n").status == doctor.OK
    assert doctor.disk("/x", 1 * GIB).status == doctor.FAIL
    assert doctor.disk("/x", 5 * GIB).status == doctor.WARN
    assert doctor.disk("/x", 50 * GIB).status == doctor.OK


def test_resolution_and_reachability():
    def resolve(name):
        if name == "gone":
            raise OSError("Name or service not known")
        return "192.0.2.1"

    checks = doctor.resolution(["a", "gone"], resolve)
    assert [c.status for c in checks] == [doctor.OK, doctor.FAIL] and "/etc/hosts" in checks[1].fix
    reach = doctor.reachability([("b agent", "192.0.2.2", 7379)], lambda h, p: False)
    assert reach[0].status == doctor.WARN


class FakeStack:
    def __init__(self, rows):
        self.rows = rows

    def services(self):
        return self.rows

    def expected_services(self):
        return ["health", "mlflow", "redis"]

    def healthchecked_services(self):
        return {"health", "mlflow", "redis"}

    def logs_tail(self, name, lines):
        return "ERROR: something broke\n" if name == "mlflow" else ""


def _ok_run(cmd, **kw):
    if cmd[:2] == ["docker", "version"]:
        return subprocess.CompletedProcess(cmd, 0, "1.47\n", "")
    return subprocess.CompletedProcess(cmd, 0, "2.40.3\n", "")


def test_the_whole_flow_on_a_stack_with_a_stopped_service(project, tmp_path):
    path = project("{}\n")
    rows = [{"Service": "health", "State": "running", "Health": "healthy"}, {"Service": "mlflow", "State": "exited", "ExitCode": 1}]
    probes = doctor.Probes(
        run=_ok_run,
        meminfo=lambda: "MemAvailable: 16777216 kB\n",
        disk_free=lambda p: 100 * GIB,
        port_free=lambda h, p: True,
        http_json=lambda url: {"known_head": "ray-cpu:6379"} if url.endswith("/") else {"nodes": []},
    )
    checks = doctor.run(lambda: load_validated(path), lambda loaded: FakeStack(rows), probes, here=str(tmp_path))
    by = {c.name: c for c in checks}
    assert by["config"].status == by["engine"].status == by["compose"].status == doctor.OK
    assert by["service mlflow"].status == doctor.FAIL and "ERROR: something broke" in by["service mlflow"].detail
    assert by["service redis"].detail == "not created"
    assert by["head"].status == doctor.OK
    assert doctor.exit_code(checks) == 1
    parsed = json.loads(doctor.format_json(checks))
    assert {"name", "status", "detail", "fix"} <= set(parsed[0])
    text = doctor.format_text(checks)
    assert "FAIL  service mlflow" in text and "fix: inv logs mlflow; then inv up" in text


def test_an_invalid_config_fails_the_first_check_and_stops_there(project, tmp_path):
    path = project("gpu: maybe\n")
    probes = doctor.Probes(run=_ok_run, meminfo=lambda: "MemAvailable: 16777216 kB\n", disk_free=lambda p: 100 * GIB)
    checks = doctor.run(lambda: load_validated(path), lambda loaded: None, probes, here=str(tmp_path))
    assert checks[0].name == "config" and checks[0].status == doctor.FAIL and "maybe" in checks[0].detail
    assert not any(c.name.startswith("service") for c in checks)


def test_a_missing_firewall_on_a_multi_host_config_fails_with_the_fix():
    class Cfg:
        def get(self, *path):
            return [{"name": "a"}, {"name": "b"}] if path == ("hosts",) else None

    def missing(cfg, host):
        return (["multi-host: the firewall of a is not in place (markers absent). Apply the rules: ..."], [])

    got = doctor.firewall(Cfg(), missing)
    assert got[0].status == doctor.FAIL and "not in place" in got[0].detail and "inv firewall --host NAME --persist" in got[0].fix
    assert doctor.firewall(Cfg(), lambda cfg, host: ([], ["firewall: the rules are loaded"]))[0].status == doctor.OK


def test_an_env_that_does_not_open_the_data_fails_with_the_way_out():
    from cslr.identity import IdentityError

    def refuse():
        raise IdentityError(
            "the .env does not open the data volume cslr_postgres-data\n  put back the .env that made it\n  or inv backup, then inv down --volumes --yes"
        )

    got = doctor.data_secrets(refuse)
    assert got.status == doctor.FAIL and "cslr_postgres-data" in got.detail and "put back the .env" in got.fix
    assert doctor.data_secrets(lambda: []).status == doctor.OK
