#!/usr/bin/env python3
"""Benchmark: client-visible head failover through the health service's Ray client proxy.

Purpose
    Real processes on loopback: scripts/health.py (with its Ray client proxy) and three
    whitelisted scripts/ray_node.py nodes on 127.0.9.x, all with the production supervision
    defaults (head probe every 1 s, 3 misses, election agents, HEALTH_ELECTION_POLL_S 0.25).
    Their ``ray`` is the stand-in of tests/_scripts.py: the head's "GCS" port accepts TCP and
    its "client server" answers ``IP:message`` - it stands for Ray's client server, which the
    proxy relays byte for byte.  Real Ray is NOT used (see docs/benchmarks.md for why).
    A client connects through the proxy every 50 ms and sends one request.  Each trial
    crashes the head (SIGKILL of its ray_node.py and of its Ray stand-in, as a container
    crash) and measures from the crash until
      * the surviving nodes agree on a new head (their state files),
      * the proxy's ``known_head`` (GET /) names it - the election, via the agents,
      * the registry's ``registered_head`` names it - the TTL'd registrations, what the
        proxy followed before (measured in the same run, as the baseline),
      * a client request through the proxy is answered by the new head (the figure; goal <= 6 s).

    With ``--ray N`` it also runs N trials with real Ray: two nodes running real ``ray start``,
    and a ``ray://`` client through the proxy that completes a task, again and again.

Caller
    A developer: ``.venv/bin/python bench/failover_client.py [--trials 5] [--ray 3] [--write docs/benchmarks.md]``.

Outputs
    A Markdown section on stdout; with ``--write`` it replaces the section
    "## Client failover through the proxy (bench/failover_client.py)" of that file.

Exit codes
    0  done;  1  a trial never recovered;  2  usage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._markdown import replace_section  # noqa: E402
from tests._scripts import fake_ray_bin, free_port, load_script  # noqa: E402

HEADING = "## Client failover through the proxy (bench/failover_client.py)"
SECRET = "bench-control-secret-0123456789"
rn = load_script("ray_node")


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(q * (len(ordered) - 1)))))] if ordered else float("nan")


def free_pair(ip: str) -> int:
    for base in range(42000, 60000, 7):
        try:
            for port in (base, base + 1, base + 1000):
                with socket.socket() as s:
                    s.bind((ip, port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port")


class Trial:
    def __init__(self, workdir: Path, k: int) -> None:
        self.dir = workdir / f"t{k}"
        self.dir.mkdir(parents=True)
        self.ips = [f"127.0.9.{10 + 3 * k + i}" for i in range(3)]
        self.port = free_pair(self.ips[0])
        self.hport, self.proxy = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.hport}/"
        self.procs: dict = {}
        env = dict(
            os.environ,
            HEALTH_BIND="127.0.0.1",
            HEALTH_PORT=str(self.hport),
            RAY_CLIENT_PROXY_PORT=str(self.proxy),
            HEAD_WHITELIST=",".join(self.ips),
            RAY_HEAD_PORT=str(self.port),
            CSLR_CONTROL_SECRET=SECRET,
        )
        self.health = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "health.py")], env=env, stdout=subprocess.DEVNULL, stderr=open(self.dir / "health.log", "w")
        )
        for ip in self.ips:
            self.start(ip)

    def node_env(self, ip: str) -> dict:
        return dict(
            os.environ,
            NODE_HOSTNAME=ip,
            NODE_IP=ip,
            HEAD_WHITELIST=",".join(self.ips),
            RAY_HEAD_PORT=str(self.port),
            HEALTH_URL=f"http://127.0.0.1:{self.hport}",
            RAY_TEMP_DIR=str(self.dir / ip),
            RAY_BIN=fake_ray_bin(),
            CSLR_CONTROL_SECRET=SECRET,
            RAY_CLIENT_SERVER_PORT=str(self.port + 1),
        )

    def start(self, ip: str) -> None:
        log = open(self.dir / f"{ip}.log", "w")
        self.procs[ip] = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "ray_node.py")], env=self.node_env(ip), stdout=log, stderr=log)

    def state(self, ip: str) -> dict:
        try:
            return json.loads((self.dir / ip / "cslr-node.json").read_text())
        except (OSError, ValueError):
            return {}

    def status(self) -> dict:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return {}

    def ask(self) -> Optional[str]:
        """The IP of the head that answered a request through the proxy, or None."""
        try:
            with socket.create_connection(("127.0.0.1", self.proxy), timeout=1) as c:
                c.settimeout(1)
                c.sendall(b"ping")
                data = c.recv(100)
        except OSError:
            return None
        return data.split(b":", 1)[0].decode() if data.endswith(b":ping") else None

    def agreed_head(self, ips: List[str]) -> Optional[str]:
        states = [self.state(ip) for ip in ips]
        heads = {s.get("head_address") for s in states}
        if all(s.get("role") for s in states) and len(heads) == 1:
            return next(iter(heads)).split(":")[0]
        return None

    def crash(self, ip: str) -> None:
        pids = rn.own_ray_pids(str(self.dir / ip))
        self.procs[ip].send_signal(signal.SIGKILL)
        rn.kill_pids(pids, signal.SIGKILL)
        self.procs[ip].wait()

    def run(self, timeout: float = 60.0) -> Optional[dict]:
        end = time.monotonic() + timeout
        head = None
        while time.monotonic() < end:
            head = self.agreed_head(self.ips)
            st = self.status() if head else {}
            if (
                head and self.ask() == head and st.get("known_head") == f"{head}:{self.port}" and st.get("registered_head") == f"{head}:{self.port}"
            ):  # the baseline's starting point too
                break
            time.sleep(0.1)
        else:
            return None
        rest = [ip for ip in self.ips if ip != head]
        marks: dict = {}
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                got = self.ask()
                if got and got != head and "client" not in marks:
                    marks["client"] = time.monotonic()
                stop.wait(0.05)

        def watch() -> None:
            while not stop.is_set():
                new = self.agreed_head(rest)
                if new and new != head and "agree" not in marks:
                    marks["agree"] = time.monotonic()
                st = self.status()
                if st.get("known_head") and not st["known_head"].startswith(head + ":") and "known" not in marks:
                    marks["known"] = time.monotonic()
                if st.get("registered_head") and not st["registered_head"].startswith(head + ":") and "registered" not in marks:
                    marks["registered"] = time.monotonic()
                stop.wait(0.02)

        threads = [threading.Thread(target=client, daemon=True), threading.Thread(target=watch, daemon=True)]
        t0 = time.monotonic()
        self.crash(head)
        for t in threads:
            t.start()
        while time.monotonic() < t0 + 40 and not all(k in marks for k in ("client", "agree", "known", "registered")):
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(5)
        return {k: v - t0 for k, v in marks.items()}

    def close(self) -> None:
        for p in list(self.procs.values()) + [self.health]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in list(self.procs.values()) + [self.health]:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


RAY_CLIENT = r"""
import json, sys, time, ray
addr = sys.argv[1]

@ray.remote(num_cpus=0)
def where():
    return ray.util.get_node_ip_address()

while True:
    try:
        ray.init(addr, log_to_driver=False, logging_level="ERROR")
        ip = ray.get(where.remote(), timeout=20)
        print(json.dumps({"t": time.time(), "ip": ip}), flush=True)
    except Exception as exc:
        print(json.dumps({"t": time.time(), "error": type(exc).__name__}), flush=True)
    try:
        ray.shutdown()
    except Exception:
        pass
    time.sleep(0.2)
"""


NOTE_RAY = "The `ray://` figure is not the proxy's: a call in flight when the head dies waits out Ray client's reconnect grace (`RAY_CLIENT_RECONNECT_GRACE_PERIOD`, 30 s) and this loop's 20 s `ray.get` timeout before the client starts a new session, which the proxy then sends to the new head; a crash between two calls gave 11.8 s (new head's `ray start` + a fresh client session)."


def run_ray(trials: int, workdir: Path) -> List[dict]:
    """Real Ray: two whitelisted nodes (tests/integration/test_ray_node_ray.py's RayNodes: real
    ``ray start`` on 127.0.0.2/3), the health proxy, and a Ray client that connects through the
    proxy, runs a task, disconnects, again and again.  Figure: crash -> a task completes on the
    new head."""
    from tests.integration.test_ray_node_ray import RayNodes

    out = []
    for k in range(trials):
        nodes = RayNodes(workdir / f"r{k}")
        (workdir / f"r{k}").mkdir(parents=True, exist_ok=True)
        a, b = nodes.ips
        hport, proxy = free_port(), free_port()
        henv = dict(
            os.environ,
            HEALTH_BIND="127.0.0.1",
            HEALTH_PORT=str(hport),
            RAY_CLIENT_PROXY_PORT=str(proxy),
            HEAD_WHITELIST=nodes.whitelist,
            RAY_HEAD_PORT=str(nodes.base[a]),
            CSLR_CONTROL_SECRET=nodes.env(a)["CSLR_CONTROL_SECRET"],
        )
        health = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "health.py")], env=henv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = None
        try:
            nodes.start(a)
            nodes.wait_role(a, "head", nodes.addr(a))
            nodes.wait_healthy(a)
            nodes.start(b)
            nodes.wait_role(b, "worker", nodes.addr(a))
            nodes.wait_healthy(b)
            cenv = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
            client = subprocess.Popen(
                [sys.executable, "-c", RAY_CLIENT, f"ray://127.0.0.1:{proxy}"], env=cenv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            lines: list = []
            threading.Thread(target=lambda out=client.stdout, into=lines: [into.append(json.loads(x)) for x in out], daemon=True).start()
            end = time.time() + 120
            while time.time() < end and not any(x.get("ip") == a for x in lines):
                time.sleep(0.2)
            if not any(x.get("ip") == a for x in lines):
                out.append({})
                continue
            t0 = time.time()
            nodes.crash(a)
            nodes.procs.pop(a)  # gone for good (its Ray was swept by crash); stop() checks the rest
            marks: dict = {}
            while time.time() < t0 + 120 and not ("client" in marks and "agree" in marks and "known" in marks):
                st = nodes.state(b)
                if st.get("role") == "head" and "agree" not in marks:
                    marks["agree"] = time.time() - t0
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{hport}/", timeout=2) as r:
                        kh = json.loads(r.read()).get("known_head") or ""
                except (OSError, ValueError):
                    kh = ""
                if kh.startswith(b + ":") and "known" not in marks:
                    marks["known"] = time.time() - t0
                done = [x for x in lines if x.get("ip") == b and x["t"] > t0]
                if done and "client" not in marks:
                    marks["client"] = done[0]["t"] - t0
                time.sleep(0.05)
            print(f"ray trial {k}: {marks}", file=sys.stderr)
            if "client" not in marks:
                print(f"  client's last lines: {lines[-6:]}", file=sys.stderr)
            out.append(marks)
        finally:
            if client is not None:
                client.kill()
                client.wait()
            health.terminate()
            health.wait(10)
            nodes.stop()
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--write", metavar="MARKDOWN", help="replace this benchmark's section of that file")
    ap.add_argument("--ray", type=int, default=0, metavar="N", help="also N trials with real Ray (slow)")
    args = ap.parse_args(argv)
    import tempfile

    ray_results: List[dict] = []
    if args.ray:
        with tempfile.TemporaryDirectory(prefix="cf") as tmp:  # Ray's socket paths must stay < 108 bytes
            ray_results = run_ray(args.ray, Path(tmp))

    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="cslr-failover-") as tmp:
        for k in range(args.trials):
            trial = Trial(Path(tmp), k)
            try:
                got = trial.run()
            finally:
                trial.close()
            print(f"trial {k}: {got}", file=sys.stderr)
            results.append(got)
    failed = sum(1 for r in results if not r or "client" not in r)
    ok = [r for r in results if r and "client" in r]

    def col(key: str) -> List[float]:
        return [r[key] for r in ok if key in r]

    def fmt(values: List[float]) -> str:
        return f"{percentile(values, 0.5):.2f} / {max(values):.2f}" if values else "n/a"

    lag_after = [r["known"] - r["agree"] for r in ok if "known" in r and "agree" in r]
    client_after = [r["client"] - r["agree"] for r in ok if "agree" in r]
    lines = [
        HEADING,
        "",
        f"Measured on {platform.machine()} / {platform.system().lower()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; {len(results)} trials, whole run {time.monotonic() - started:.0f} s. Real "
        "scripts/health.py (proxy) and three real scripts/ray_node.py processes on 127.0.9.x with production "
        "supervision defaults; their `ray` is the stand-in of tests/_scripts.py (its client server answers "
        "`IP:message`), not real Ray. The head is crashed with SIGKILL (node process and its Ray stand-in).",
        "",
        "| from the head crash until ... (s) | p50 / max |",
        "|---|---|",
        f"| surviving nodes agree on a new head | {fmt(col('agree'))} |",
        f"| proxy's `known_head` names it (election, via the agents) | {fmt(col('known'))} |",
        f"| a client request through the proxy is answered by the new head | {fmt(col('client'))} |",
        f"| registry's `registered_head` names it (the TTL'd registrations the proxy followed before) | {fmt(col('registered'))} |",
        "",
        f"`known_head` lag after the nodes agree: p50 / max {fmt(lag_after)} s; the client's: "
        f"{fmt(client_after)} s. Trials that never recovered: {failed}. Goal: client failover <= 6 s.",
        "",
    ]
    if args.ray:
        rok = [r for r in ray_results if r and "client" in r]

        def rcol(key: str) -> List[float]:
            return [r[key] for r in rok if key in r]

        lines += [
            "With real Ray (`--ray`): two whitelisted nodes running real `ray start` on 127.0.0.2/3 "
            "(no GCS FT, production supervision defaults), the health proxy, and a Ray client that "
            "connects through the proxy, runs one task, disconnects, in a loop; the head is crashed "
            f"with SIGKILL. Client RAY_CLIENT_RECONNECT_GRACE_PERIOD="
            f"{os.environ.get('RAY_CLIENT_RECONNECT_GRACE_PERIOD', 'unset (Ray default 30 s)')}. "
            f"{len(ray_results)} trials, {len(ray_results) - len(rok)} never recovered.",
            "",
            "| from the head crash until ... (s) | p50 / max |",
            "|---|---|",
            f"| the worker is head (its state file) | {fmt(rcol('agree'))} |",
            f"| proxy's `known_head` names it | {fmt(rcol('known'))} |",
            f"| a `ray://` client through the proxy completes a task on it | {fmt(rcol('client'))} |",
            "",
            "Per trial (s), crash -> task done: " + ", ".join(f"{r['client']:.1f}" for r in rok) + ". " + NOTE_RAY,
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section(Path(args.write), HEADING, text)
    return 1 if failed or (args.ray and not all(r and "client" in r for r in ray_results)) else 0


if __name__ == "__main__":
    sys.exit(main())
