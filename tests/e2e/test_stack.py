"""End to end: `inv up` on a real Docker engine with the locally built images, then status,
test-cluster, persistence across down/up, and `down --volumes --yes`.

Modelled on getsentry/self-hosted's integration tests: one session fixture brings the stack up
with the product's own command, dumps `ps` and logs when anything fails, and always tears down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import requests

from tests.e2e.conftest import E2E_USER, clean_env, compose_cmd, invoking_uid

MLFLOW = "http://127.0.0.1:15000"
PROJECT = "cslr-e2e"

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("dump_on_failure")]


def test_a_non_root_docker_group_user_ran_the_stack(inv):
    # In CI (root) every `inv` above ran through runuser as the e2e user, from its own clone
    # whose venv holds the runtime dependencies only.
    if os.geteuid() != 0:
        pytest.skip("run as a non-root user already")
    ident = subprocess.run([*inv.prefix, "id", "-un"], capture_output=True, text=True, env=inv.env).stdout.split()
    groups = subprocess.run([*inv.prefix, "id", "-Gn"], capture_output=True, text=True, env=inv.env).stdout.split()
    assert ident == [E2E_USER] and "docker" in groups and "root" not in groups
    venv = subprocess.run(
        [str(inv.repo / ".venv" / "bin" / "python"), "-c", "import importlib.util as u; print(bool(u.find_spec('ray')), bool(u.find_spec('pytest')))"],
        capture_output=True,
        text=True,
    )
    assert venv.stdout.split() == ["False", "False"], venv.stdout + venv.stderr


def test_up_used_the_local_bases_and_built_the_projects_images(inv):
    out = inv.up_output
    assert "images.source auto: the local bases are present" in out or "the registry cannot be reached" in out
    env = dict(line.split("=", 1) for line in (inv.workdir / "_build" / ".env").read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert env["CSLR_IMAGE_SOURCE"] == "local" and env["PIP_NO_INDEX"] == "1"
    assert env["RAY_BASE_IMAGE"] == "cslr-local/ray:2.60.0" and env["RAY_IMAGE"].startswith("cslr/ray:2.60.0-")
    for var in ("RAY_IMAGE", "RAY_GPU_IMAGE", "MLFLOW_IMAGE", "MARIMO_IMAGE"):
        assert subprocess.run(["docker", "image", "inspect", env[var]], capture_output=True).returncode == 0, env[var]


def test_every_service_healthy(inv):
    out = inv("ps", check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith("cslr-platform ") and "project cslr-e2e" in lines[0]  # the platform's version first
    header = next(i for i, line in enumerate(lines) if line.startswith("SERVICE"))
    rows = {line.split()[0]: line.split()[1:3] for line in lines[header + 1 :] if line.strip()}
    assert set(rows) == {"health", "ray-cpu", "ray-gpu", "redis", "postgres", "mlflow", "marimo"}, out
    assert all(state == ["running", "healthy"] for state in rows.values()), out


def test_status_shows_two_alive_nodes_and_one_head(inv):
    out = inv("status", check=True).stdout
    node_lines = [line.split() for line in out.splitlines() if line.startswith("  ray-")]
    assert sorted(fields[0] for fields in node_lines) == ["ray-cpu", "ray-gpu"], out
    assert sorted(fields[2] for fields in node_lines) == ["head", "worker"], out
    assert all(fields[-1] == "yes" for fields in node_lines), out
    assert "(2 alive node(s))" in out and "mlflow: reachable" in out and "redis: reachable" in out
    # The same for scripts (issue 19): --json on status and ps.
    import json

    got = json.loads(inv("status", "--json", check=True).stdout)
    assert sorted(n["role"] for n in got["ray_nodes"]) == ["head", "worker"] and got["mlflow"] is True and got["redis"] is True
    ps = json.loads(inv("ps", "--json", check=True).stdout)
    assert ps["project"] == "cslr-e2e" and {s["service"]: s["state"] for s in ps["services"]}["mlflow"] == "running"


def test_test_cluster_passes(inv):
    proc = inv("test-cluster", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS ray: 2/2 alive nodes ran a task" in proc.stdout and "head ray://health:10001" in proc.stdout
    assert "PASS mlflow:" in proc.stdout and "PASS redis:" in proc.stdout
    # A Ray task on each node logs to MLflow with the node's own client (the project's image).
    assert "PASS mlflow-from-nodes: a task on each of 2/2 nodes (ray-cpu, ray-gpu) logged to run" in proc.stdout
    assert "4 passed, 0 failed" in proc.stdout


def client_nodes(inv) -> list:
    """Alive Ray nodes as a script on the host sees them through the published client proxy."""
    token = dict(line.split("=", 1) for line in (inv.workdir / ".env").read_text().splitlines() if "=" in line and not line.startswith("#"))["RAY_AUTH_TOKEN"]
    code = "import ray; ray.init('ray://127.0.0.1:11001'); print(sorted(n['NodeManagerHostname'] for n in ray.nodes() if n['Alive']))"
    env = {**clean_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token.strip("'")}
    for _attempt in range(3):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
        # Ray's own client-server proxier on the head starts one server process per client; on a
        # loaded machine that process can die on start ("Starting Ray client server failed"), and
        # Ray tells the client to connect again -- as scripts/cluster_test.py does. Only that
        # failure is retried; any other is the test's failure.
        if proc.returncode == 0 or "Starting Ray client server failed" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    return eval(proc.stdout.strip().splitlines()[-1])  # a list literal printed by the snippet


def try_nodes(inv):
    try:
        return client_nodes(inv)
    except (AssertionError, subprocess.TimeoutExpired):
        return None  # the head is still starting


def known_head() -> str:
    try:
        return requests.get("http://127.0.0.1:18888/", timeout=5).json().get("known_head") or ""
    except requests.RequestException:
        return ""


def wait_until(predicate, seconds: float, what: str):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def test_ray_client_from_the_host_through_the_published_proxy(inv):
    # What a researcher's script on the host does: ray.init("ray://127.0.0.1:PORT") with the token.
    assert client_nodes(inv) == ["ray-cpu", "ray-gpu"]


def test_head_failover_keeps_the_client_address(inv):
    compose = compose_cmd(inv.workdir / "_build")
    assert known_head().startswith("ray-cpu:")
    # The stable Jobs address (the health service's dashboard relay) answers before and after.
    assert inv("jobs").returncode == 0
    subprocess.run(compose + ["stop", "ray-cpu"], check=True, capture_output=True, env=clean_env())
    # The stop reached ray_node.py (it runs as the non-root user: the container's root init needs
    # KILL to forward the signal); otherwise the engine SIGKILLs it after the grace period (137).
    cid = subprocess.run(compose + ["ps", "-aq", "ray-cpu"], check=True, capture_output=True, text=True, env=clean_env()).stdout.strip()
    code = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", cid], check=True, capture_output=True, text=True).stdout.strip()
    assert code != "137", "docker stop never reached ray_node.py: killed after the grace period"
    # The worker notices the head loss, re-elects and becomes head; the proxy follows.
    wait_until(lambda: known_head().startswith("ray-gpu:"), 180, "ray-gpu to become head")
    assert wait_until(lambda: try_nodes(inv) == ["ray-gpu"] or None, 120, "the client to reach ray-gpu") is True
    assert wait_until(lambda: inv("jobs").returncode == 0 or None, 120, "the Jobs address to answer from ray-gpu") is True
    # The old head comes back and joins the incumbent instead of taking over.
    subprocess.run(compose + ["start", "ray-cpu"], check=True, capture_output=True, env=clean_env())
    wait_until(lambda: try_nodes(inv) == ["ray-cpu", "ray-gpu"] or None, 180, "ray-cpu to rejoin")
    assert known_head().startswith("ray-gpu:")


def test_published_ports_are_on_loopback_only(inv):
    proc = subprocess.run(
        ["docker", "ps", "--filter", f"label=com.docker.compose.project={PROJECT}", "--format", "{{.Ports}}"], capture_output=True, text=True, check=True
    )
    bindings = [p.strip() for line in proc.stdout.splitlines() for p in line.split(",") if "->" in p]
    assert bindings and all(b.startswith("127.0.0.1:") for b in bindings), bindings


def test_no_secret_is_in_any_process_command_line(inv):
    # argv is visible to every local user (`ps`), container processes included: no secret of
    # .env may appear there, whichever service or node it belongs to.
    secrets = {
        k: v.strip("'\"")
        for k, v in (line.split("=", 1) for line in (inv.workdir / ".env").read_text().splitlines() if "=" in line and not line.startswith("#"))
    }
    secrets = {k: v for k, v in secrets.items() if len(v) >= 16}
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "MARIMO_TOKEN", "RAY_AUTH_TOKEN"} <= set(secrets)
    cmdlines = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True, check=True).stdout
    assert "marimo edit" in cmdlines and "redis-server" in cmdlines and "ray_node.py" in cmdlines  # the stack is there
    leaked = sorted(name for name, value in secrets.items() if value in cmdlines)
    assert leaked == [], f"in argv: {leaked}"


# Would this environment let the software report? The opt-outs each vendor reads (cslr/topology.py TELEMETRY).
def reports(env: dict[str, str]) -> list[str]:
    found = []
    if env.get("MLFLOW_DISABLE_TELEMETRY", "").lower() not in ("true", "1") and env.get("DO_NOT_TRACK", "").lower() != "true":
        found.append("MLflow telemetry (neither MLFLOW_DISABLE_TELEMETRY nor DO_NOT_TRACK=true)")
    if env.get("RAY_USAGE_STATS_ENABLED") != "0":
        found.append(f"Ray usage stats (RAY_USAGE_STATS_ENABLED={env.get('RAY_USAGE_STATS_ENABLED')!r})")
    if env.get("MARIMO_SKIP_UPDATE_CHECK") != "1":
        found.append("marimo update check (MARIMO_SKIP_UPDATE_CHECK is not 1)")
    return found


def test_no_running_container_would_report_usage_data(inv):
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(ids) >= 7, ids  # health, ray-cpu, ray-gpu, redis, postgres, mlflow, marimo
    inspected = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout)
    would = {}
    for container in inspected:
        env = dict(item.split("=", 1) for item in container["Config"]["Env"] or [] if "=" in item)
        name = container["Config"]["Labels"]["com.docker.compose.service"]
        if reports(env):
            would[name] = reports(env)
    assert would == {}, would
    # MLflow's own verdict, in the server's container and a Ray node's (where jobs log runs); and
    # the control: without the variables the same MLflow would report, so the check can fail.
    probe = "from mlflow.telemetry.utils import is_telemetry_disabled as d; print(d())"
    for service in ("mlflow", "ray-cpu", "marimo"):
        verdict = subprocess.run(
            [*compose_cmd(inv.workdir / "_build"), "exec", "-T", service, "python3", "-c", probe], capture_output=True, text=True, timeout=120
        )
        assert verdict.stdout.split()[-1:] == ["True"], (service, verdict.stdout, verdict.stderr)
    bare = subprocess.run(
        [*compose_cmd(inv.workdir / "_build"), "exec", "-T", "mlflow", "env", "-u", "MLFLOW_DISABLE_TELEMETRY", "-u", "DO_NOT_TRACK", "python3", "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert bare.stdout.split()[-1:] == ["False"], (bare.stdout, bare.stderr)


def containers(inv) -> dict[str, dict]:
    """`docker inspect` of each running container of the stack, by service."""
    ids = subprocess.run(compose_cmd(inv.workdir / "_build") + ["ps", "-q"], capture_output=True, text=True, check=True, env=clean_env()).stdout.split()
    docs = __import__("json").loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout)
    return {d["Config"]["Labels"]["com.docker.compose.service"]: d for d in docs}


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as handle:
        return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)


def service_processes(init_pid: int) -> list[tuple[int, dict[str, str]]]:
    """(host pid, /proc status) of every process under a container's PID 1 (docker-init): the
    service itself, not what `docker exec` (a healthcheck, say) started beside it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(proc_status(int(entry))["PPid"]), []).append(int(entry))
            except (OSError, KeyError, ValueError):
                pass  # gone meanwhile
    out, todo = [], list(children.get(init_pid, []))
    while todo:
        pid = todo.pop()
        try:
            out.append((pid, proc_status(pid)))
        except OSError:
            continue
        todo += children.get(pid, [])
    return out


def test_every_container_runs_unprivileged_with_limits(inv):
    # What the engine applied, not only what the file says: no capability but cap_add's, no
    # new privileges, a memory limit and rotated logs on every container of the stack.
    found = containers(inv)
    assert set(found) == {"health", "ray-cpu", "ray-gpu", "redis", "postgres", "mlflow", "marimo"}
    for name, doc in found.items():
        host = doc["HostConfig"]
        assert host["CapDrop"] == ["ALL"], (name, host["CapDrop"])
        assert "no-new-privileges:true" in (host["SecurityOpt"] or []), (name, host["SecurityOpt"])
        assert host["Memory"] > 0, name
        # The limits leave room: no service was killed for memory or restarted by the engine.
        assert not doc["State"]["OOMKilled"] and doc["RestartCount"] == 0, (name, doc["State"], doc["RestartCount"])
        assert host["LogConfig"]["Type"] == "json-file" and host["LogConfig"]["Config"].get("max-size"), (name, host["LogConfig"])
    # Every process of every service (below docker-init) is not root, holds no capability and
    # cannot gain one: no setuid binary (sudo) can raise it.
    ray_uid = str(invoking_uid(inv))
    for name, doc in found.items():
        procs = service_processes(doc["State"]["Pid"])
        assert procs, f"{name}: no process under docker-init"
        for pid, status in procs:
            what = f"{name}: pid {pid} {status.get('Name')}"
            assert "0" not in status["Uid"].split() and "0" not in status["Gid"].split(), (what, status["Uid"], status["Gid"])
            assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, (what, status["CapEff"])
            assert status["NoNewPrivs"] == "1", what
            if name.startswith("ray-"):
                assert status["Uid"].split()[0] == ray_uid, (what, status["Uid"])  # the user who ran `inv`
            if name == "mlflow":
                assert status["Uid"].split()[0] == "10001", (what, status["Uid"])


def test_the_ray_images_passwordless_sudo_is_inert(inv):
    compose = compose_cmd(inv.workdir / "_build")
    env = dict(line.split("=", 1) for line in (inv.workdir / "_build" / ".env").read_text().splitlines() if "=" in line and not line.startswith("#"))
    image = env["RAY_IMAGE"].strip("'")
    # The control: the image's user 1000 (`ray`) has passwordless sudo, as in the official image.
    control = subprocess.run(["docker", "run", "--rm", "--user", "1000", "--entrypoint", "sudo", image, "-n", "true"], capture_output=True, text=True)
    assert control.returncode == 0, control.stderr
    # In the stack it is inert: health runs as that user; a Ray node's processes and anything
    # exec'd into them (as that user too) cannot become root.
    for cmd in (["exec", "-T", "health", "sudo", "-n", "true"], ["exec", "-T", "--user", "1000:100", "ray-cpu", "sudo", "-n", "id"]):
        proc = subprocess.run(compose + cmd, capture_output=True, text=True, env=clean_env())
        assert proc.returncode != 0 and "uid=0" not in proc.stdout, (cmd, proc.stdout, proc.stderr)
    top = subprocess.run(["docker", "top", containers(inv)["mlflow"]["Id"], "-eo", "pid,uid,args"], capture_output=True, text=True, check=True).stdout
    server = [line.split(None, 2) for line in top.splitlines()[1:] if "mlflow" in line and "docker-init" not in line]
    assert server and all(uid != "0" for _, uid, _ in server), top  # docker top (ps) agrees


def mlflow_call(method: str, path: str, **kw) -> dict:
    resp = requests.request(method, f"{MLFLOW}/api/2.0/mlflow/{path}", timeout=30, **kw)
    resp.raise_for_status()
    return resp.json()


def test_up_starts_again_a_service_stopped_by_hand(inv):
    # Day two: someone ran `docker stop` on a service (or the MLflow migration left it stopped).
    # `inv up` must start it again; before issue 17's fix, its first look at `compose ps -a` saw
    # the container stopped from before and gave up with "mlflow is exited", no log line.
    name = f"{PROJECT}-mlflow-1"
    subprocess.run(["docker", "stop", name], capture_output=True, check=True, timeout=120)
    up = inv("up", "--timeout", "600")
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    assert "mlflow     exited" not in up.stdout  # the stopped container is not shown as this up's
    state = subprocess.run(["docker", "inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}", name], capture_output=True, text=True, check=True)
    assert state.stdout.split() == ["running", "healthy"]
    mlflow_call("GET", "experiments/search", params={"max_results": 1})


def test_a_run_survives_down_and_up_and_volumes_go_only_with_yes(inv):
    exp = mlflow_call("POST", "experiments/create", json={"name": f"e2e-{uuid.uuid4().hex[:8]}"})["experiment_id"]
    run_id = mlflow_call("POST", "runs/create", json={"experiment_id": exp})["run"]["info"]["run_id"]
    mlflow_call("POST", "runs/log-parameter", json={"run_id": run_id, "key": "lr", "value": "0.01"})

    inv("down", check=True)
    inv("up", "--timeout", "600", check=True)
    run = mlflow_call("GET", "runs/get", params={"run_id": run_id})["run"]
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"lr": "0.01"}

    refused = inv("down", "--volumes")
    assert refused.returncode != 0 and "--yes" in refused.stderr
    assert mlflow_call("GET", "runs/get", params={"run_id": run_id})["run"]["info"]["run_id"] == run_id

    inv("down", "--volumes", "--yes", check=True)
    volumes = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert volumes == []
    # Modules after this one (tests/e2e/test_survive.py) use the session's stack: bring it back, empty.
    inv("up", "--timeout", "600", check=True)
