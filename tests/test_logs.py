"""cslr/logs.py: `inv logs` in one time order across services, and --since checked."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cslr import logs
from cslr.errors import UsageError

COMPOSE = """\
health-1   | 2026-12-06T00:00:03.000000001Z health: listening on 0.0.0.0:8080
health-1   | 2026-12-06T00:00:09.5Z health: stopped
ray-cpu-1  | 2026-12-06T00:00:01.25Z ray_node: decision: head
ray-cpu-1  |   a continuation without a timestamp
ray-cpu-1  | 2026-12-06T00:00:05Z ray_node: started
"""


def test_lines_of_several_services_in_time_order_continuations_kept():
    got = logs.merge(COMPOSE)
    assert [line.split("|", 1)[1].split()[0][17:] for line in got if "T00" in line] == ["01.25Z", "03.000000001Z", "05Z", "09.5Z"]
    assert got[1] == "ray-cpu-1  |   a continuation without a timestamp"  # stays after its line


@given(st.lists(st.text(max_size=60).filter(lambda t: "\n" not in t and "\r" not in t), max_size=30))
def test_merge_keeps_every_line_whatever_they_are(lines):
    assert sorted(logs.merge("\n".join(lines))) == sorted("\n".join(lines).splitlines())


@pytest.mark.parametrize("ok", ["10m", "2h", "1h30m", "45s", "2026-12-06", "2026-12-06T09:00:00Z", "2026-12-06T09:00:00+09:00"])
def test_since_accepts_what_compose_takes(ok):
    assert logs.check_since(ok) == ok


@pytest.mark.parametrize("bad", ["", "ten minutes", "10", "-5m", "2026-13", "10m; rm -rf /"])
def test_since_refuses_the_rest_with_the_expected_forms(bad):
    with pytest.raises(UsageError, match="expected a duration such as 10m"):
        logs.check_since(bad)


def test_follow_order_lets_lines_out_in_time_order_within_the_window():
    order = logs.FollowOrder(window=1.0)
    order.push("ray-cpu-1  | 2026-12-06T00:00:02Z second", now=0.0)
    order.push("health-1   | 2026-12-06T00:00:01Z first (arrived later, happened earlier)", now=0.4)
    order.push("ray-cpu-1  |   its continuation", now=0.5)
    assert order.release(now=0.9) == []  # nothing is a window old yet
    got = order.release(now=1.0)
    assert [line.split()[-1] for line in got] == ["earlier)", "second", "continuation"]
    order.push("health-1   | 2026-12-06T00:00:03Z third", now=1.1)
    assert order.release(now=1.5) == [] and order.flush() == ["health-1   | 2026-12-06T00:00:03Z third"]


def test_follow_order_never_lets_a_late_line_jump_before_what_was_printed():
    order = logs.FollowOrder(window=0.5)
    order.push("a-1 | 2026-12-06T00:00:05Z printed", now=0.0)
    assert order.release(now=0.5) == ["a-1 | 2026-12-06T00:00:05Z printed"]
    order.push("b-1 | 2026-12-06T00:00:04Z too late for the window", now=0.6)  # printed next, not lost
    assert order.release(now=1.1) == ["b-1 | 2026-12-06T00:00:04Z too late for the window"]


@given(st.lists(st.tuples(st.sampled_from(["a-1 | ", "b-1 | ", "c-1 | "]), st.integers(0, 59), st.booleans()), max_size=40))
def test_follow_order_keeps_every_line_once(items):
    order, out = logs.FollowOrder(window=0.3), []
    for i, (prefix, second, stamped) in enumerate(items):
        order.push(f"{prefix}2026-12-06T00:00:{second:02d}Z line {i}" if stamped else f"{prefix}  cont {i}", now=i * 0.1)
        out += order.release(now=i * 0.1)
    out += order.flush()
    assert sorted(out) == sorted(
        f"{prefix}2026-12-06T00:00:{second:02d}Z line {i}" if stamped else f"{prefix}  cont {i}" for i, (prefix, second, stamped) in enumerate(items)
    )


def test_follow_prints_a_followed_process_in_order_and_returns_its_status(tmp_path):
    import io
    import sys

    script = "import sys, time\nprint('b-1 | 2026-12-06T00:00:02Z b', flush=True)\nprint('a-1 | 2026-12-06T00:00:01Z a', flush=True)\nsys.exit(3)\n"
    out = io.StringIO()
    assert logs.follow([sys.executable, "-c", script], {}, out=out, window=5.0) == 3
    assert out.getvalue() == "a-1 | 2026-12-06T00:00:01Z a\nb-1 | 2026-12-06T00:00:02Z b\n"
