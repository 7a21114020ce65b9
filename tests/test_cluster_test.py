"""Pure parts of scripts/cluster_test.py; the whole script runs against a live stack in e2e."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
from tests._scripts import load_script  # noqa: E402

ct = load_script("cluster_test")


def test_summary_line_and_exit_code():
    assert ct.summarize([("PASS", "ray", ""), ("SKIP", "gpu", ""), ("PASS", "redis", "")]) == ("2 passed, 0 failed, 1 skipped", 0)
    assert ct.summarize([("PASS", "ray", ""), ("FAIL", "mlflow", "")]) == ("1 passed, 1 failed", 1)
    assert ct.summarize([("SKIP", "x", "")])[1] == 1  # nothing checked is not a pass


def test_node_coverage_needs_every_alive_node():
    alive = [{"NodeID": "a", "NodeManagerHostname": "ray-cpu"}, {"NodeID": "b", "NodeManagerHostname": "ray-gpu"}]
    assert ct.node_coverage(alive, ["a", "b", "a"]) == (True, "2/2 alive nodes ran a task (ray-cpu, ray-gpu)")
    assert ct.node_coverage(alive, ["a"])[0] is False


def test_addresses():
    assert ct.split_address("health:10001") == ("health", 10001)
    assert ct.split_address("health") == ("health", 6379)
    assert ct.client_url("ray-gpu:6379", 10001) == "ray://ray-gpu:10001"
    assert ct.ray_address({"RAY_ADDRESS": "ray://health:10001", "HEALTH_URL": "http://127.0.0.1:9"}) == "ray://health:10001"
    assert ct.ray_address({}) == ""


def test_missing_address_exits_2(capsys):
    assert ct.main([], environ={}) == 2
