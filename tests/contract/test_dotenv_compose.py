"""Contract: what `format_dotenv` writes, the real Compose v2 binary reads back byte for byte
(`docker compose --env-file F config --environment`; no engine needed)."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cslr import compose, config
from tests.test_dotenv import NASTY, VALUES

pytestmark = pytest.mark.contract


def compose_reads(tmp_path, values: dict) -> dict:
    env_file = tmp_path / "values.env"
    env_file.write_text(config.format_dotenv(values, "header"), encoding="utf-8")
    project = tmp_path / "compose.yaml"
    project.write_text("services:\n  a:\n    image: scratch\n")
    proc = subprocess.run(
        [compose.compose_binary(), "--env-file", str(env_file), "-f", str(project), "config", "--environment"], capture_output=True, env={}, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    out = {}
    for line in proc.stdout.decode("utf-8").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key in values:
            out[key] = value
    return out


def test_nasty_values_read_back_unchanged(tmp_path):
    values = {f"V{i}": v for i, v in enumerate(NASTY)}
    assert compose_reads(tmp_path, values) == values


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(VALUES, min_size=1, max_size=12))
def test_random_printable_values_read_back_unchanged(tmp_path, values):
    named = {f"V{i}": v for i, v in enumerate(values)}
    assert compose_reads(tmp_path, named) == named


HAND_WRITTEN = [
    "A=plain # comment",
    "A='lit $X \\n' # c",
    'A="x\\ty\\q$$z\\$"',
    "A='a\\'b'",
    "A='x\\\\'",
    "A='a\\\\\\'b'",
    "export A=1",
    "A = spaced  ",
    "A=",
    "A=a#b",
    'A="a\\\\\\"b"',
]


@pytest.mark.parametrize("line", HAND_WRITTEN)
def test_parse_dotenv_reads_hand_written_lines_as_compose_does(tmp_path, line):
    env_file = tmp_path / "hand.env"
    env_file.write_text(line + "\n")
    project = tmp_path / "compose.yaml"
    project.write_text("services:\n  a:\n    image: scratch\n")
    proc = subprocess.run(
        [compose.compose_binary(), "--env-file", str(env_file), "-f", str(project), "config", "--environment"],
        capture_output=True,
        text=True,
        env={},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    theirs = next(v for k, _, v in (ln.partition("=") for ln in proc.stdout.splitlines()) if k == "A")
    assert config.parse_dotenv(line + "\n", ".env")["A"][0] == theirs
