"""What the stack tasks print (cslr/report.py)."""

from __future__ import annotations

import pytest

from cslr import config, report


def test_parse_ps_json_lines_and_array():
    lines = '{"Service":"a","State":"running","Health":""}\n{"Service":"b","State":"exited","Health":""}\n'
    assert [r["Service"] for r in report.parse_ps(lines)] == ["a", "b"]
    assert [r["Service"] for r in report.parse_ps('[{"Service":"c"}]')] == ["c"]
    assert report.parse_ps("") == []


@pytest.mark.parametrize(
    "row,checked,ready",
    [
        ({"State": "running", "Health": "healthy"}, True, True),
        ({"State": "running", "Health": "starting"}, True, False),
        # A restarted container briefly reports no health at all: not healthy yet.
        ({"State": "running", "Health": ""}, True, False),
        ({"State": "running", "Health": ""}, False, True),
        ({"State": "created", "Health": ""}, False, False),
    ],
)
def test_is_ready(row, checked, ready):
    assert report.is_ready(row, checked) is ready


def test_service_urls_use_bind_address_and_mask_the_token(project):
    cfg = config.load(project("services:\n  mlflow: {port: 5500}\n"), environ={})
    urls = report.service_urls(cfg)
    assert urls["mlflow"] == "http://127.0.0.1:5500/"
    # The token is never printed in full unless asked; the table says where it is.
    assert urls["marimo"] == "http://127.0.0.1:8080/?access_token=mari… (token: MARIMO_TOKEN in .env)"
    assert "marimo-secret" not in report.table([{"Service": "marimo", "State": "running", "Health": "healthy"}], cfg)
    assert report.service_urls(cfg, show_secrets=True)["marimo"] == "http://127.0.0.1:8080/?access_token=marimo-secret"
    wide = config.load(project("network: {bind_address: 0.0.0.0}\n"), environ={})
    assert report.service_urls(wide)["health"] == (
        "http://127.0.0.1:8888/ (Ray client: ray://127.0.0.1:10001, dashboard / Jobs: http://127.0.0.1:8260/; dialog token: RAY_AUTH_TOKEN in .env)"
    )


def test_dashboard_urls_say_which_token_the_dialog_wants_and_show_it_only_when_asked(project):
    cfg = config.load(project("{}\n", env={"RAY_AUTH_TOKEN": "ray-token-0123456789abcdef"}), environ={})
    urls = report.service_urls(cfg)
    for name in ("health", "ray-cpu", "ray-gpu"):
        assert "dialog token: RAY_AUTH_TOKEN in .env" in urls[name] and "ray-token-0123" not in urls[name]
    assert "dialog token: ray-token-0123456789abcdef" in report.service_urls(cfg, show_secrets=True)["health"]
    off = config.load(project("ray: {auth: disabled}\n", env={"RAY_AUTH_TOKEN": "ray-token-0123456789abcdef"}), environ={})
    assert "dialog token" not in report.service_urls(off)["health"]


@pytest.mark.parametrize("secret,shown", [("", ""), ("short", "…"), ("abcdefghij", "abcd…")])
def test_mask_never_shows_a_short_secret(secret, shown):
    assert report.mask(secret) == shown


def test_format_status_lists_nodes_head_first():
    result = {
        "ray_nodes": [
            {"hostname": "ray-gpu", "ip": "172.28.0.11", "role": "worker", "cpus": 4.0, "gpus": 1.0, "alive": True},
            {"hostname": "ray-cpu", "ip": "172.28.0.10", "role": "head", "cpus": 2.0, "gpus": 0.0, "alive": True},
        ],
        "head": "ray-cpu",
        "mlflow": True,
        "redis": None,
    }
    lines = report.format_status(result).splitlines()
    assert lines[2].split() == ["ray-cpu", "172.28.0.10", "head", "2", "0", "yes"]
    assert lines[3].split() == ["ray-gpu", "172.28.0.11", "worker", "4", "1", "yes"]
    assert "head: ray-cpu (2 alive node(s))" in lines and "mlflow: reachable" in lines and "redis: switched off" in lines
