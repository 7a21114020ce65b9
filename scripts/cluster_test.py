#!/usr/bin/env python3
"""End-to-end check of a running CSLR stack, from inside it (the `test-cluster` service).

Purpose
    Proves the stack does what an experiment needs: a Ray job whose tasks run on every alive
    node, GPUs visible on GPU nodes, an MLflow run (parameter, metric, artifact) written and
    read back through the tracking server, and a Redis write and read.

Caller
    `inv test-cluster`, which runs `docker compose run --rm --no-deps test-cluster` with the
    overlay `overlays/test-cluster.yaml`. Needs `ray`, `mlflow` (or mlflow-skinny) and `redis`
    in the image; runs with the stack's RAY_ADDRESS, RAY_AUTH_TOKEN, MLFLOW_TRACKING_URI,
    REDIS_URL and HEALTH_URL.

Outputs
    One line per check (`PASS name: detail`, `FAIL name: detail`, `SKIP name: detail`), then the
    closing line `N passed, M failed` (`, K skipped` when any were skipped).

Exit codes
    0 every check passed (or was skipped because its service is switched off), 1 a check failed,
    2 bad environment.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
import traceback
import urllib.request
import uuid
from typing import Callable, Dict, List, Optional, Tuple

Result = Tuple[str, str, str]  # (status, name, detail)


# ------------------------------------------------------------------------------------- pure


def split_address(address: str, default_port: int = 6379) -> Tuple[str, int]:
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    return (host, int(port)) if port.isdigit() else (address, default_port)


def summarize(results: List[Result]) -> Tuple[str, int]:
    passed = sum(1 for s, _, _ in results if s == "PASS")
    failed = sum(1 for s, _, _ in results if s == "FAIL")
    skipped = sum(1 for s, _, _ in results if s == "SKIP")
    line = f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else "")
    return line, (1 if failed or not passed else 0)


def node_coverage(alive: List[Dict], ran_on: List[str]) -> Tuple[bool, str]:
    want = sorted(n["NodeID"] for n in alive)
    got = sorted(set(ran_on))
    names = sorted(n.get("NodeManagerHostname", "?") for n in alive)
    return want == got, f"{len(got)}/{len(want)} alive nodes ran a task ({', '.join(names)})"


# ------------------------------------------------------------------------------------- effects


def tcp_open(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def known_head(health_url: str) -> Optional[str]:
    try:
        with urllib.request.urlopen(health_url.rstrip("/") + "/", timeout=3) as resp:
            return json.load(resp).get("known_head") or None
    except Exception:
        return None


def client_url(head: str, client_port: int) -> str:
    """`ray-gpu:6379` (a head's GCS address) -> `ray://ray-gpu:10001` (its Ray client server)."""
    host = head[len("ray://") :] if head.startswith("ray://") else head
    host = host.rsplit(":", 1)[0] if ":" in host else host
    return f"ray://{host}:{client_port}"


def ray_address(environ: Dict[str, str]) -> str:
    """RAY_ADDRESS (normally the health service's Ray client proxy, which follows the head);
    without it, the head the health service knows, at RAY_CLIENT_SERVER_PORT.

    This container is no Ray node, so it connects through a Ray client server.
    """
    if environ.get("RAY_ADDRESS"):
        return environ["RAY_ADDRESS"]
    port = int(environ.get("RAY_CLIENT_SERVER_PORT") or 10001)
    head = known_head(environ.get("HEALTH_URL", "")) if environ.get("HEALTH_URL") else None
    return client_url(head, port) if head else ""


def check_ray(address: str, mlflow_uri: str = "") -> List[Result]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    host, port = split_address(address[len("ray://") :] if address.startswith("ray://") else address)
    deadline = time.monotonic() + 60
    while not tcp_open(host, port):  # a Ray client against a dead head blocks ~40 s: probe first
        if time.monotonic() > deadline:
            return [("FAIL", "ray", f"head {address} does not accept TCP")]
        time.sleep(1)
    # The proxy accepts as soon as the health service runs; the head's client server may still
    # be starting (and a failover moves it): retry the connection a few times.
    for attempt in range(1, 7):
        try:
            ray.init(address=address, log_to_driver=False)
            break
        except ConnectionError:
            if attempt == 6 or time.monotonic() > deadline + 60:
                raise
            time.sleep(5)
    try:
        alive = [n for n in ray.nodes() if n.get("Alive")]

        @ray.remote(num_cpus=0)
        def where() -> Dict:
            ctx = ray.get_runtime_context()
            return {"node": ctx.get_node_id(), "host": socket.gethostname(), "gpus": ray.get_gpu_ids()}

        refs = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote() for n in alive]
        ran = ray.get(refs, timeout=120)
        ok, detail = node_coverage(alive, [r["node"] for r in ran])
        results: List[Result] = [("PASS" if ok and len(alive) >= 1 else "FAIL", "ray", f"{detail}; head {address}")]

        if mlflow_uri:
            results += guarded("mlflow-from-nodes", lambda: [nodes_log_to_mlflow(alive, mlflow_uri)])

        gpu_nodes = [n for n in alive if n.get("Resources", {}).get("GPU", 0) > 0]
        if not gpu_nodes:
            results.append(("SKIP", "gpu", "no node offers GPUs"))
        for node in gpu_nodes:

            @ray.remote(num_gpus=1, num_cpus=0)
            def gpu_probe() -> Dict:
                return {"gpus": ray.get_gpu_ids(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES", "")}

            seen = ray.get(gpu_probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(), timeout=120)
            ok = bool(seen["gpus"]) and seen["cuda"] != ""
            results.append(
                ("PASS" if ok else "FAIL", "gpu", f"{node.get('NodeManagerHostname')}: GPU ids {seen['gpus']}, CUDA_VISIBLE_DEVICES={seen['cuda']!r}")
            )
        return results
    finally:
        ray.shutdown()


def nodes_log_to_mlflow(alive: List[Dict], uri: str) -> Result:
    """What an experiment does: a task on every node logs to MLflow with the node's own client
    (the project's Ray image carries it) and the node's MLFLOW_TRACKING_URI; read back here."""
    import mlflow
    import ray
    from mlflow.tracking import MlflowClient
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment("cslr-test-cluster").experiment_id
    run_id = MlflowClient(uri).create_run(experiment, run_name=f"from-nodes-{uuid.uuid4().hex[:8]}").info.run_id

    @ray.remote(num_cpus=0)
    def log_from_node(run: str) -> str:
        import mlflow as node_mlflow  # the node's own MLflow client, its own tracking URI

        host = socket.gethostname()
        node_mlflow.MlflowClient().log_param(run, f"node.{host}", "logged")
        return host

    refs = [log_from_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(run_id) for n in alive]
    hosts = sorted(ray.get(refs, timeout=180))
    params = MlflowClient(uri).get_run(run_id).data.params
    ok = len(hosts) == len(alive) and all(params.get(f"node.{h}") == "logged" for h in hosts)
    return (
        "PASS" if ok else "FAIL",
        "mlflow-from-nodes",
        f"a task on each of {len(hosts)}/{len(alive)} nodes ({', '.join(hosts)}) logged to run {run_id}" if ok else f"params read back: {params}",
    )


def check_mlflow(uri: str) -> List[Result]:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("cslr-test-cluster")
    marker = uuid.uuid4().hex
    with tempfile.TemporaryDirectory() as tmp:
        artifact = os.path.join(tmp, "marker.txt")
        with open(artifact, "w") as handle:
            handle.write(marker)
        with mlflow.start_run(run_name=f"test-cluster-{marker[:8]}") as run:
            mlflow.log_param("marker", marker)
            mlflow.log_metric("accuracy", 0.875)
            mlflow.log_artifact(artifact)
        client = MlflowClient(uri)
        got = client.get_run(run.info.run_id)
        back = client.download_artifacts(run.info.run_id, "marker.txt", tmp + "/back")
        with open(back) as handle:
            content = handle.read()
    ok = got.data.params.get("marker") == marker and got.data.metrics.get("accuracy") == 0.875 and content == marker
    return [
        (
            "PASS" if ok else "FAIL",
            "mlflow",
            f"run {run.info.run_id}: param, metric and artifact read back" if ok else f"read back {got.data.params}, {got.data.metrics}, {content!r}",
        )
    ]


def check_redis(url: str) -> List[Result]:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    key, value = f"cslr:test-cluster:{uuid.uuid4().hex}", uuid.uuid4().hex
    client.set(key, value, ex=300)
    back = client.get(key)
    client.delete(key)
    ok = back == value.encode()
    return [("PASS" if ok else "FAIL", "redis", "write and read back" if ok else f"read back {back!r}")]


def guarded(name: str, fn: Callable[[], List[Result]]) -> List[Result]:
    try:
        return fn()
    except Exception as exc:  # a check that crashes is a failed check, with its reason
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return [("FAIL", name, detail)]


def main(argv: Optional[List[str]] = None, environ: Optional[Dict[str, str]] = None) -> int:
    env = dict(os.environ if environ is None else environ)
    address = ray_address(env)
    if not address:
        print("RAY_ADDRESS is not set and the health service knows no head", file=sys.stderr)
        return 2
    results: List[Result] = []
    results += guarded("ray", lambda: check_ray(address, env.get("MLFLOW_TRACKING_URI", "")))
    if env.get("MLFLOW_TRACKING_URI"):
        results += guarded("mlflow", lambda: check_mlflow(env["MLFLOW_TRACKING_URI"]))
    else:
        results.append(("SKIP", "mlflow", "MLflow is switched off"))
    if env.get("REDIS_URL"):
        results += guarded("redis", lambda: check_redis(env["REDIS_URL"]))
    else:
        results.append(("SKIP", "redis", "Redis is switched off"))
    for status, name, detail in results:
        print(f"{status} {name}: {detail}", flush=True)
    line, code = summarize(results)
    print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
