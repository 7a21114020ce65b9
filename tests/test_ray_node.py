"""Tests of scripts/ray_node.py: decision tables, the election protocol, and real processes on loopback."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # tests/ is no package; make tests._scripts importable under any runner
    sys.path.insert(0, _ROOT)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._scripts import CONTROL_SECRET, SCRIPTS, fake_ray_bin, load_script

rn = load_script("ray_node")
E = rn.Entry
WL = [E("a", 6379), E("b", 6379), E("c", 6380)]


# ----------------------------------------------------------------- parsing


def test_whitelist_parses_hosts_ports_and_order():
    assert rn.parse_whitelist(" a , b:6380,,c ", 6379) == [E("a", 6379), E("b", 6380), E("c", 6379)]


@pytest.mark.parametrize("bad", ["a:x", "a:0", "a:70000", ":6379"])
def test_whitelist_rejects_bad_entries(bad):
    with pytest.raises(ValueError):
        rn.parse_whitelist(bad, 6379)


def test_whitelist_index_matches_hostname_case_insensitively_and_prefers_own_port():
    wl = [E("h", 6379), E("x", 6379), E("X", 6380)]
    assert rn.whitelist_index(wl, "H", 6379) == 0
    assert rn.whitelist_index(wl, "x", 6380) == 2
    assert rn.whitelist_index(wl, "x", 7000) == 1
    assert rn.whitelist_index(wl, "nobody", 6379) is None


# ----------------------------------------------------------------- the document's tables


@pytest.mark.parametrize(
    "health_ok, live_head, role, head, reason_word",
    [
        (False, None, "head", "a:6379", "failsafe"),  # Health 利用不可 -> Head (Failsafe)
        (True, None, "head", "a:6379", "no existing head"),  # 既存 Head なし -> Head
        (True, E("c", 6380), "worker", "c:6380", "join"),  # 既存 Head あり -> Worker
        (False, E("c", 6380), "worker", "c:6380", "join"),  # failsafe unless a live head is found
    ],
)
def test_whitelisted_table(health_ok, live_head, role, head, reason_word):
    d = rn.decide(True, health_ok, live_head, E("a", 6379))
    assert (d.role, d.head_address) == (role, head)
    assert reason_word in d.reason


@pytest.mark.parametrize(
    "env, cfg, live, expected, reason_word",
    [
        ("envhost:7000", "cfghost:7001", E("b", 6379), "envhost:7000", "HEAD_ADDRESS"),
        ("envhost", "cfghost:7001", None, "envhost:6379", "HEAD_ADDRESS"),
        ("", "cfghost:7001", E("b", 6379), "cfghost:7001", "config"),
        ("", "cfghost", None, "cfghost:6379", "config"),
        ("", "", None, "a:6379", "first whitelisted"),
        ("", "", E("c", 6380), "c:6380", "live head"),
    ],
)
def test_non_whitelisted_address_priority(env, cfg, live, expected, reason_word):
    d = rn.decide(False, True, live, None, env, cfg, WL, 6379)
    assert (d.role, d.head_address) == ("worker", expected)
    assert reason_word in d.reason


def test_non_whitelisted_without_any_address_is_a_configuration_error():
    with pytest.raises(ValueError):
        rn.worker_target("", "", [], 6379)
    with pytest.raises(ValueError):
        rn.load_config({"NODE_HOSTNAME": "w", "NODE_IP": "10.0.0.9", "CSLR_CONTROL_SECRET": CONTROL_SECRET})


def test_load_config_reads_the_contract():
    cfg = rn.load_config(
        {
            "CSLR_CONTROL_SECRET": CONTROL_SECRET,
            "NODE_HOSTNAME": "ray-gpu-host-a",
            "NODE_IP": "10.0.0.2",
            "RAY_HEAD_PORT": "6379",
            "HEAD_WHITELIST": "ray-cpu-host-a:6379,ray-gpu-host-a:6380",
            "RAY_NUM_CPUS": "4",
            "RAY_NODE_MANAGER_PORT": "7001",
            "RAY_GCS_FT": "1",
            "RAY_START_EXTRA_ARGS": '--labels=\'{"a": "b"}\'',
        }
    )
    assert cfg.index == 1
    assert cfg.own_port == 6380  # the whitelist entry's port is what peers probe
    assert cfg.agent_bind == "10.0.0.2" and rn.agent_port_for(cfg.self_entry, cfg.agent_port) == 7380
    assert cfg.gcs_ft and cfg.ports["RAY_NODE_MANAGER_PORT"] == 7001
    assert cfg.extra_args == ['--labels={"a": "b"}']


@pytest.mark.parametrize("var, value", [("RAY_HEAD_PORT", "x"), ("RAY_NODE_MANAGER_PORT", "70000"), ("HEAD_WHITELIST", "a:b")])
def test_load_config_rejects_bad_values(var, value):
    env = {"NODE_HOSTNAME": "a", "NODE_IP": "10.0.0.1", "HEAD_WHITELIST": "a", "CSLR_CONTROL_SECRET": CONTROL_SECRET, var: value}
    with pytest.raises(ValueError):
        rn.load_config(env)


def test_main_reports_configuration_errors_with_exit_2():
    assert rn.main(["--decide"], environ={"NODE_HOSTNAME": "w", "NODE_IP": "10.0.0.9", "CSLR_CONTROL_SECRET": CONTROL_SECRET}) == 2


# ----------------------------------------------------------------- election step


def V(i, state, gcs=False, port=6379):
    return rn.PeerView(i, E(f"n{i}", port), state, gcs)


def test_step_joins_live_head_even_if_lower_priority():
    step = rn.election_step(0, rn.DECIDING, [V(1, "worker"), V(2, "head", True)])
    assert step.action == rn.JOIN and step.target == E("n2", 6379)


def test_step_never_joins_an_open_head_port_without_an_authenticated_agent():
    # The document's plain TCP scan would join it; here it may be anyone who bound the port of a
    # node that is down (issue 16): no proof of the secret, no join.
    assert rn.election_step(1, rn.DECIDING, [V(0, rn.ABSENT, True)]).action == rn.CLAIM
    assert rn.election_step(1, rn.DECIDING, [V(0, rn.FORGED, True)]).action == rn.CLAIM


def test_step_waits_for_a_starting_head_or_a_claimer():
    assert rn.election_step(0, rn.DECIDING, [V(1, "head", False)]).action == rn.WAIT
    assert rn.election_step(0, rn.DECIDING, [V(1, "claiming")]).action == rn.WAIT
    assert rn.election_step(0, rn.CLAIMING, [V(1, "claiming")]).action == rn.BACKOFF


def test_step_defers_to_live_higher_priority_candidate_only():
    assert rn.election_step(2, rn.DECIDING, [V(0, "deciding"), V(1, rn.ABSENT)]).action == rn.WAIT
    assert rn.election_step(2, rn.DECIDING, [V(0, rn.UNKNOWN)]).action == rn.WAIT
    assert rn.election_step(0, rn.DECIDING, [V(1, "deciding"), V(2, "worker")]).action == rn.CLAIM
    assert rn.election_step(2, rn.DECIDING, [V(0, "worker"), V(1, rn.ABSENT)]).action == rn.CLAIM


def test_step_commits_only_when_second_read_is_clean():
    assert rn.election_step(0, rn.CLAIMING, [V(1, "deciding"), V(2, rn.ABSENT)]).action == rn.COMMIT
    assert rn.election_step(0, rn.CLAIMING, [V(1, rn.UNKNOWN)]).action == rn.BACKOFF
    assert rn.election_step(1, rn.CLAIMING, [V(0, "deciding")]).action == rn.BACKOFF


def test_step_stops_reading_at_the_first_decisive_peer():
    read = []

    def lazy():
        for v in [V(0, "deciding"), V(2, "claiming"), V(3, "head", True)]:
            read.append(v.index)
            yield v

    assert rn.election_step(1, rn.DECIDING, lazy()).action == rn.WAIT
    assert read == [0]


# ----------------------------------------------------------------- protocol model under any interleaving


class Sim:
    """Candidates as generators: every publish and every single peer read is one atomic step."""

    def __init__(self, n, unknown_reads):
        self.n = n
        self.pub = {}  # index -> (state, head_index); missing = not running
        self.gcs = set()
        self.unknown = unknown_reads  # set of (reader, step) pairs whose read times out
        self.steps = 0
        self.decided = {}
        self.max_heads = 0

    def read(self, me, j):
        if (me, self.steps) in self.unknown and j in self.pub:
            return rn.PeerView(j, E(f"n{j}", 1), rn.UNKNOWN, False)
        state = self.pub.get(j, (rn.ABSENT, None))[0]
        return rn.PeerView(j, E(f"n{j}", 1), state, j in self.gcs)

    def candidate(self, me):
        my_state = rn.DECIDING
        self.pub[me] = (rn.DECIDING, None)
        yield
        while True:
            views = []
            for j in range(self.n):
                if j != me:
                    views.append(self.read(me, j))
                    yield
            step = rn.election_step(me, my_state, views)
            if step.action == rn.JOIN:
                self.pub[me] = (rn.WORKER, int(step.target.host[1:]))
                self.decided[me] = ("worker", int(step.target.host[1:]))
                return
            if step.action == rn.CLAIM:
                my_state = rn.CLAIMING
            elif step.action == rn.COMMIT:
                self.pub[me] = (rn.HEAD, me)
                self.decided[me] = ("head", me)
                heads = sum(1 for s, _ in self.pub.values() if s == rn.HEAD)
                self.max_heads = max(self.max_heads, heads)
                yield
                self.gcs.add(me)  # Ray's port opens a while after the commit
                return
            elif step.action == rn.BACKOFF:
                my_state = rn.DECIDING
            self.pub[me] = (my_state, None)
            yield


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 5),
    start_at=st.lists(st.integers(0, 30), min_size=5, max_size=5),
    schedule=st.lists(st.integers(0, 4), max_size=400),
    unknown=st.sets(st.tuples(st.integers(0, 4), st.integers(0, 200)), max_size=30),
)
def test_any_interleaving_elects_exactly_one_head(n, start_at, schedule, unknown):
    sim = Sim(n, unknown)
    gens = {}
    runnable = lambda: [i for i in range(n) if i in gens]  # noqa: E731

    def step(i):
        try:
            next(gens[i])
        except StopIteration:
            del gens[i]

    started = set()
    for pick in schedule + [k % n for k in range(20000)]:
        for i in range(n):
            if i not in started and start_at[i] <= sim.steps:
                started.add(i)
                gens[i] = sim.candidate(i)
        if len(started) == n and not gens:
            break
        live = runnable()
        if live:
            step(live[pick % len(live)])
        sim.steps += 1
    assert sim.max_heads <= 1
    assert len(sim.decided) == n, "every candidate decided"
    heads = [i for i, (role, _) in sim.decided.items() if role == "head"]
    assert len(heads) == 1
    assert all(target == heads[0] for _, target in sim.decided.values())


# ----------------------------------------------------------------- ray command and environment


def _cfg(**env):
    base = {"NODE_HOSTNAME": "a", "NODE_IP": "10.0.0.2", "HEAD_WHITELIST": "a,b", "RAY_TEMP_DIR": "/tmp/r", "CSLR_CONTROL_SECRET": CONTROL_SECRET}
    base.update(env)
    return rn.load_config(base)


def test_head_command_has_port_dashboard_resources_and_usage_stats_off():
    cfg = _cfg(
        RAY_NUM_CPUS="4",
        RAY_NUM_GPUS="1",
        RAY_MEMORY="1000",
        RAY_OBJECT_STORE_MEMORY="500",
        RAY_DASHBOARD_PORT="8266",
        RAY_MIN_WORKER_PORT="20000",
        RAY_MAX_WORKER_PORT="20100",
        RAY_START_EXTRA_ARGS="--foo bar",
    )
    cmd = rn.build_ray_command(cfg, rn.Decision("head", "a:6379", ""))
    for arg in [
        "--head",
        "--block",
        "--port=6379",
        "--node-ip-address=10.0.0.2",
        "--dashboard-host=0.0.0.0",
        "--dashboard-port=8266",
        "--num-cpus=4",
        "--num-gpus=1",
        "--memory=1000",
        "--object-store-memory=500",
        "--disable-usage-stats",
        "--temp-dir=/tmp/r",
        "--min-worker-port=20000",
        "--max-worker-port=20100",
        "--ray-client-server-port=10001",
    ]:
        assert arg in cmd
    assert cmd[:2] == ["ray", "start"] and cmd[-2:] == ["--foo", "bar"]


def test_worker_command_joins_head_and_leaves_detection_to_ray_when_empty():
    cmd = rn.build_ray_command(_cfg(), rn.Decision("worker", "b:6379", ""))
    assert "--address=b:6379" in cmd and "--head" not in cmd
    assert not any(c.startswith(("--num-cpus", "--num-gpus", "--memory")) for c in cmd)


def test_child_env_gcs_ft_on_sets_redis_and_namespace():
    cfg = _cfg(RAY_GCS_FT="1", RAY_REDIS_ADDRESS="redis:6390", RAY_CLUSTER_NAME="c1", REDIS_PASSWORD="pw")
    env = rn.ray_child_env(cfg, {}, "head")
    assert env["RAY_REDIS_ADDRESS"] == "redis:6390"
    assert env["RAY_external_storage_namespace"] == "c1"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert "--redis-password=pw" in rn.build_ray_command(cfg, rn.Decision("head", "a:6379", ""))


def test_child_env_gcs_ft_off_hides_redis_from_ray():
    env = rn.ray_child_env(_cfg(RAY_GCS_FT="0"), {"RAY_REDIS_ADDRESS": "redis:6379"}, "head")
    assert "RAY_REDIS_ADDRESS" not in env


def test_child_env_token_auth():
    env = rn.ray_child_env(_cfg(RAY_AUTH_TOKEN="s3cret"), {}, "worker")
    assert (env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"]) == ("token", "s3cret")
    env = rn.ray_child_env(_cfg(), {"RAY_AUTH_TOKEN": ""}, "worker")
    assert env["RAY_AUTH_MODE"] == "disabled" and "RAY_AUTH_TOKEN" not in env


def test_own_ray_matching_is_per_temp_dir():
    assert rn.matches_own_ray("raylet --session_dir=/tmp/n1/session_2024", "/tmp/n1")
    assert rn.matches_own_ray("ray start --temp-dir=/tmp/n1 --block", "/tmp/n1/")
    assert not rn.matches_own_ray("raylet --session_dir=/tmp/n10/session_2024", "/tmp/n1")
    assert not rn.matches_own_ray("ray start --temp-dir=/tmp/n10 --block", "/tmp/n1")


def test_agent_reply_checking_is_strict():
    cc = rn.cc
    fields = rn.agent_fields("a", "claiming", "", 0, 10001)
    t = "a:7379"
    assert cc.check_agent_reply(CONTROL_SECRET, "n1", t, cc.agent_reply(CONTROL_SECRET, "n1", t, fields)) == {**fields, "node": t}
    assert cc.check_agent_reply(CONTROL_SECRET, "n2", t, cc.agent_reply(CONTROL_SECRET, "n1", t, fields)) is None  # replayed
    assert cc.check_agent_reply(CONTROL_SECRET, "n1", t, cc.agent_reply("another-secret-0123456", "n1", t, fields)) is None
    # A genuine answer of another node, relayed from the address asked: not this node's answer.
    assert cc.check_agent_reply(CONTROL_SECRET, "n1", t, cc.agent_reply(CONTROL_SECRET, "n1", "b:7379", fields)) is None
    for junk in [b"", b"{", b"[]", b'{"state": "head"}', b'{"body": "{}", "mac": 1}', b"\xff", '{"body": "{}", "mac": "\u00e9"}'.encode()]:
        assert cc.check_agent_reply(CONTROL_SECRET, "n1", t, junk) is None


def _read(port, secret=CONTROL_SECRET):
    return rn.cc.read_agent("127.0.0.1", port, secret)[0]


def test_agent_answers_its_current_state_and_vanishes_when_closed():
    port = _free_pair("127.0.0.1")
    agent = rn.Agent("127.0.0.1", 0, "127.0.0.1", port, CONTROL_SECRET)
    try:
        assert _read(port) == "deciding"
        agent.set("head", "me:1")
        assert _read(port) == "head"
        # Without the secret there is no answer to trust: the reader sees FORGED, the agent counts it.
        assert _read(port, "wrong-secret-0123456789") == rn.FORGED
        assert sum(agent.refusals.snapshot().values()) == 1
    finally:
        agent.close()
    assert _read(port) == rn.ABSENT


def test_agent_refuses_unsigned_stale_and_replayed_requests():
    port = _free_pair("127.0.0.1")
    now = [1000.0]
    agent = rn.Agent("me", 0, "127.0.0.1", port, CONTROL_SECRET, clock=lambda: now[0], ident_host="127.0.0.1")
    me = rn.cc.node_id("127.0.0.1", port)

    def ask(line):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(line)
            return s.makefile("rb").readline()

    try:
        good, nonce = rn.cc.agent_request(CONTROL_SECRET, me, now=1000.0)
        assert rn.cc.check_agent_reply(CONTROL_SECRET, nonce, me, ask(good))["state"] == "deciding"
        assert b"unauthorized" in ask(good)  # the same request again: a replay
        stale, _ = rn.cc.agent_request(CONTROL_SECRET, me, now=1000.0 - 31)
        assert b"unauthorized" in ask(stale)
        assert b"unauthorized" in ask(b'{"v": 1}\n')
        other, _ = rn.cc.agent_request(CONTROL_SECRET, rn.cc.node_id("127.0.0.2", port), now=1000.0)
        assert b"unauthorized" in ask(other)  # genuine, but meant for another node (relayed here)
        assert agent.refusals.snapshot() == {"replay": 1, "stale": 1, "missing": 1, "wrong_target": 1}
    finally:
        agent.close()


def test_busy_agent_port_is_exit_2_naming_address_and_port(capsys, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        env = {
            "NODE_HOSTNAME": "127.0.0.1",
            "NODE_IP": "127.0.0.1",
            "HEAD_WHITELIST": f"127.0.0.1:{port - 1000}",
            "RAY_TEMP_DIR": str(tmp_path),
            "CSLR_CONTROL_SECRET": CONTROL_SECRET,
            "RAY_BIN": fake_ray_bin(),
        }
        assert rn.main([], environ=env) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "Traceback" not in err


def test_unreadable_peer_counts_as_gone_only_after_peer_dead_after():
    now = [0.0]
    cfg = _cfg(PEER_DEAD_AFTER_S="10")
    runner = rn.NodeRunner(cfg, None, clock=lambda: now[0], read_agent_fn=lambda h, p: rn.UNKNOWN, tcp_open_fn=lambda h, p, t=0.5: False)
    assert runner.view(1, E("b", 6379)).state == rn.UNKNOWN
    now[0] = 10.5
    assert runner.view(1, E("b", 6379)).state == rn.ABSENT


def test_worker_waits_out_grace_with_gcs_ft_and_leaves_at_once_without():
    class L:
        def alive(self):
            return True

    for ft, expected_misses in (("0", 3), ("1", None)):
        now, probes = [0.0], []
        cfg = _cfg(RAY_GCS_FT=ft, HEAD_LOSS_GRACE_S="30", HEAD_MONITOR_INTERVAL_S="1")
        runner = rn.NodeRunner(cfg, L(), clock=lambda now=now: now[0], tcp_open_fn=lambda h, p, t=0.5, now=now, probes=probes: probes.append(now[0]) or False)
        runner.sleep = lambda s, now=now: now.__setitem__(0, now[0] + s)
        assert runner.watch_head(E("b", 6379)) == "lost"
        if expected_misses:
            assert len(probes) == expected_misses
        else:
            assert now[0] >= 30  # kept Ray running through the grace period


def test_lower_priority_head_yields_to_a_live_higher_priority_head():
    # After a healed partition both sides run a head; only the lower-priority one yields.
    class L:
        def alive(self):
            return True

    now = [0.0]
    states = {"a": rn.HEAD, "b": rn.HEAD}
    for me, expected in (("b", "split"), ("a", "stop")):
        cfg = _cfg(NODE_HOSTNAME=me, SPLIT_CHECK_INTERVAL_S="5", HEAD_MONITOR_INTERVAL_S="1")
        stop = rn.threading.Event()
        runner = rn.NodeRunner(cfg, L(), stop=stop, clock=lambda: now[0], read_agent_fn=lambda h, p: states[h], tcp_open_fn=lambda h, p, t=0.5: True)

        def tick(s, runner=runner, stop=stop):
            now[0] += s
            if now[0] > 60:
                stop.set()

        runner.sleep = tick
        assert runner.watch_self() == expected


def test_head_keeps_its_role_when_the_higher_priority_peer_is_not_head():
    class L:
        def alive(self):
            return True

    now = [0.0]
    stop = rn.threading.Event()
    cfg = _cfg(NODE_HOSTNAME="b", SPLIT_CHECK_INTERVAL_S="5")
    runner = rn.NodeRunner(cfg, L(), stop=stop, clock=lambda: now[0], read_agent_fn=lambda h, p: rn.WORKER, tcp_open_fn=lambda h, p, t=0.5: True)
    runner.sleep = lambda s: (now.__setitem__(0, now[0] + s), now[0] > 60 and stop.set())
    assert runner.watch_self() == "stop"


def test_healthcheck_without_state_file_fails(tmp_path):
    assert (
        rn.main(
            ["--healthcheck"],
            environ={"NODE_HOSTNAME": "a", "NODE_IP": "127.0.0.1", "HEAD_WHITELIST": "a", "RAY_TEMP_DIR": str(tmp_path), "CSLR_CONTROL_SECRET": CONTROL_SECRET},
        )
        == 1
    )


# ----------------------------------------------------------------- real processes on loopback

PY = sys.executable
NODE = str(SCRIPTS / "ray_node.py")
HEALTH = str(SCRIPTS / "health.py")


def _free_pair(ips, lo=21000, hi=31000):
    """A port free on every address of ``ips`` whose agent port (+1000) is free too.

    Outside the kernel's ephemeral range (32768-60999): there any process on the machine (a Ray
    running beside the suite listens on 0.0.0.0 at ephemeral ports) may take the port between
    this check and the node's bind, which once left a node without a role for 60 s under load."""
    ips = [ips] if isinstance(ips, str) else ips
    rng = random.Random()
    for _ in range(500):
        p = rng.randrange(lo, hi)
        try:
            for ip in ips:
                for port in (p, p + 1000):
                    with socket.socket() as s:
                        s.bind((ip, port))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port")


class Cluster:
    def __init__(self, tmp_path, n, health_url="http://127.0.0.1:9/", first_octet=2):
        self.tmp = tmp_path
        self.ips = [f"127.0.0.{first_octet + i}" for i in range(n)]
        self.port = _free_pair(self.ips)
        self.whitelist = ",".join(self.ips)
        self.health_url = health_url
        self.procs = {}

    def env(self, ip, **extra):
        env = dict(os.environ)
        env.update(
            {
                "NODE_HOSTNAME": ip,
                "NODE_IP": ip,
                "HEAD_WHITELIST": self.whitelist,
                "RAY_HEAD_PORT": str(self.port),
                "NODE_AGENT_BIND": ip,
                "HEALTH_URL": self.health_url,
                "RAY_TEMP_DIR": str(self.tmp / ip),
                "RAY_BIN": fake_ray_bin(),
                "HEAD_MONITOR_INTERVAL_S": "0.3",
                "HEARTBEAT_INTERVAL_S": "0.5",
                "CSLR_CONTROL_SECRET": CONTROL_SECRET,
            }
        )
        env.update(extra)
        return env

    def start(self, ip, **extra):
        log = open(self.tmp / f"{ip}.log", "w")
        self.procs[ip] = subprocess.Popen([PY, NODE], env=self.env(ip, **extra), stdout=log, stderr=log)
        return self.procs[ip]

    def state(self, ip):
        try:
            return json.loads((self.tmp / ip / "cslr-node.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_settled(self, ips, timeout=60):
        """Poll until every node in ``ips`` has a role and all name one head; returns the states."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            states = {ip: self.state(ip) for ip in ips}
            heads = {s.get("head_address") for s in states.values()}
            if all(s.get("role") for s in states.values()) and len(heads) == 1:
                return states
            time.sleep(0.1)
        pytest.fail(f"no agreement: {states}")

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def cluster_factory(tmp_path):
    made = []

    def make(*args, **kw):
        c = Cluster(tmp_path, *args, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def _one_head(states, port):
    heads = [ip for ip, s in states.items() if s["role"] == "head"]
    assert len(heads) == 1, states
    assert all(s["head_address"] == f"{heads[0]}:{port}" for s in states.values())
    return heads[0]


@pytest.mark.parametrize("n", [2, 4, 16])
def test_candidates_started_together_end_with_one_head(cluster_factory, n):
    c = cluster_factory(n)
    for ip in c.ips:
        c.start(ip)
    head = _one_head(c.wait_settled(c.ips), c.port)
    # A fresh read after settling: still exactly one node claims the head role.
    time.sleep(1.0)
    assert _one_head({ip: c.state(ip) for ip in c.ips}, c.port) == head
    assert rn.tcp_open(head, c.port)


def test_health_service_up_registers_nodes_and_knows_the_head(cluster_factory, tmp_path):
    hport = _free_pair("127.0.0.1")
    url = f"http://127.0.0.1:{hport}"
    c = cluster_factory(4, health_url=url, first_octet=40)
    health = subprocess.Popen(
        [PY, HEALTH],
        env=dict(
            os.environ,
            HEALTH_BIND="127.0.0.1",
            HEALTH_PORT=str(hport),
            CSLR_CONTROL_SECRET=CONTROL_SECRET,
            HEAD_WHITELIST=c.whitelist,
            RAY_HEAD_PORT=str(c.port),
        ),
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 10
        while rn.http_json(url + "/")[0] != 200 and time.monotonic() < end:
            time.sleep(0.1)
        for ip in c.ips:
            c.start(ip)
        head = _one_head(c.wait_settled(c.ips), c.port)
        end = time.monotonic() + 15
        while time.monotonic() < end:
            nodes = rn.http_json(url + "/nodes")[1]["nodes"]
            if len(nodes) == 4 and all(n["role"] != "unknown" for n in nodes):
                break
            time.sleep(0.2)
        assert {n["hostname"]: n["role"] for n in nodes} == {ip: ("head" if ip == head else "worker") for ip in c.ips}
        end = time.monotonic() + 15  # the health service learns the head from the (signed) agents
        while rn.http_json(url + "/")[1]["known_head"] is None and time.monotonic() < end:
            time.sleep(0.1)
        status = rn.http_json(url + "/")[1]
        assert status["known_head"] == status["registered_head"] == f"{head}:{c.port}"
        assert status["refused"] == {}  # every node's call carried the secret
        assert "no existing head" in (tmp_path / f"{head}.log").read_text()
    finally:
        health.terminate()
        health.wait(10)


def test_health_down_is_failsafe_but_still_one_head(cluster_factory, tmp_path):
    c = cluster_factory(4, health_url="http://127.0.0.1:9/", first_octet=60)
    for ip in c.ips:
        c.start(ip)
    head = _one_head(c.wait_settled(c.ips), c.port)
    assert "failsafe" in (tmp_path / f"{head}.log").read_text()


def test_late_higher_priority_candidate_joins_existing_head(cluster_factory):
    c = cluster_factory(3, first_octet=80)
    c.start(c.ips[2])
    c.wait_settled([c.ips[2]])
    assert c.state(c.ips[2])["role"] == "head"
    c.start(c.ips[0])
    c.start(c.ips[1])
    assert _one_head(c.wait_settled(c.ips), c.port) == c.ips[2]


def test_head_loss_makes_workers_elect_a_new_head(cluster_factory):
    c = cluster_factory(3, first_octet=100)
    for ip in c.ips:
        c.start(ip)
    old = _one_head(c.wait_settled(c.ips), c.port)
    c.procs[old].send_signal(signal.SIGTERM)
    assert c.procs[old].wait(20) == 0
    assert not rn.tcp_open(old, c.port)  # its (fake) Ray went with it
    rest = [ip for ip in c.ips if ip != old]
    end = time.monotonic() + 30
    while time.monotonic() < end:
        states = {ip: c.state(ip) for ip in rest}
        if all(s.get("head_address", "").split(":")[0] in rest for s in states.values()):
            break
        time.sleep(0.1)
    new = _one_head(c.wait_settled(rest), c.port)
    assert new != old
    c.start(old)  # the old head comes back and must not take over
    assert _one_head(c.wait_settled(c.ips), c.port) == new


def test_sigterm_stops_own_ray_only_and_exits_0(cluster_factory, tmp_path):
    c = cluster_factory(2, first_octet=120)
    bystander = subprocess.Popen([PY, *fake_ray_bin().split()[1:], "start", "--block", f"--temp-dir={tmp_path}/other"])
    try:
        for ip in c.ips:
            c.start(ip)
        c.wait_settled(c.ips)
        for ip in c.ips:
            c.procs[ip].send_signal(signal.SIGTERM)
            assert c.procs[ip].wait(20) == 0
            assert rn.own_ray_pids(str(tmp_path / ip)) == []
        assert bystander.poll() is None  # another node's Ray on this machine is left alone
    finally:
        bystander.kill()
        bystander.wait()


def test_decide_prints_one_json_line(cluster_factory):
    c = cluster_factory(2, first_octet=140)
    c.start(c.ips[0])
    c.wait_settled([c.ips[0]])
    out = subprocess.run([PY, NODE, "--decide"], env=c.env(c.ips[1]), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    d = json.loads(out.stdout)
    assert d == {"role": "worker", "head_address": f"{c.ips[0]}:{c.port}", "reason": d["reason"]}
    env = c.env("127.0.0.150", HEAD_ADDRESS="10.1.2.3:7000")
    out = subprocess.run([PY, NODE, "--decide"], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout)["head_address"] == "10.1.2.3:7000"
    assert len(out.stdout.strip().splitlines()) == 1


def test_healthcheck_of_a_head(cluster_factory):
    c = cluster_factory(1, first_octet=160)
    c.start(c.ips[0])
    c.wait_settled(c.ips)
    end = time.monotonic() + 10
    while not rn.tcp_open(c.ips[0], c.port) and time.monotonic() < end:
        time.sleep(0.1)
    check = [PY, NODE, "--healthcheck"]
    assert subprocess.run(check, env=c.env(c.ips[0]), timeout=10).returncode == 0
    c.procs[c.ips[0]].send_signal(signal.SIGTERM)
    c.procs[c.ips[0]].wait(20)
    assert subprocess.run(check, env=c.env(c.ips[0]), timeout=10).returncode == 1


def test_worker_stops_its_ray_quickly_after_head_loss():
    # With its head gone the raylet cannot stop gracefully; waiting RAY_STOP_TIMEOUT_S (8 s) for
    # it was most of the failover time. Head loss uses LOST_HEAD_STOP_S; other stops keep the default.
    calls = []

    class L:
        def sweep(self):
            pass

        def start(self, decision):
            pass

        def alive(self):
            return True

        def stop(self, timeout=None):
            calls.append(timeout)

    runner = rn.NodeRunner(_cfg(NODE_HOSTNAME="w"), L(), with_agent=False)
    decisions = iter([rn.Decision("worker", "b:6379", ""), None])
    runner.elect = lambda deadline=None: next(decisions)
    runner.watch_head = lambda target: "lost"
    runner.sleep = lambda s: None
    runner.write_state = lambda: None
    assert runner.run() == 0
    assert calls == [rn.LOST_HEAD_STOP_S, None]


def test_export_prometheus_targets_copies_rays_list_while_head_only(tmp_path):
    session = tmp_path / "session_1"
    session.mkdir()
    (session / rn.PROM_SD_FILE).write_text('[{"labels": {"job": "ray"}, "targets": ["172.28.0.10:8090"]}]')
    (tmp_path / rn.PROM_SD_FILE).symlink_to(session / rn.PROM_SD_FILE)  # as Ray links it
    out = tmp_path / rn.PROM_SD_EXPORT
    assert rn.export_prometheus_targets(str(tmp_path), True) is True
    assert out.read_text() == (session / rn.PROM_SD_FILE).read_text() and not out.is_symlink()
    assert out.stat().st_mode & 0o777 == 0o644
    assert rn.export_prometheus_targets(str(tmp_path), True) is False  # unchanged: not rewritten
    (session / rn.PROM_SD_FILE).write_text('[{"targets": ["172.28.0.1')  # Ray mid-write: the last good list stays
    assert rn.export_prometheus_targets(str(tmp_path), True) is False and "172.28.0.10:8090" in out.read_text()
    assert rn.export_prometheus_targets(str(tmp_path), False) is True and not out.exists()
    assert rn.export_prometheus_targets(str(tmp_path), False) is False  # nothing to remove
    assert rn.export_prometheus_targets(str(tmp_path / "missing"), True) is False
