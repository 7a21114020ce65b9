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
