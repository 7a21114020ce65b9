"""tests/conftest.py: with CI=true a prerequisite skip fails, a GPU skip does not."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
TESTS = """
import pytest

def test_needs_redis():
    pytest.skip("redis-server missing (tools/ci-deps.sh)")

def test_needs_gpu():
    pytest.skip("needs a GPU host")

def test_runs():
    assert True
"""


def test_prerequisite_skips_fail_in_ci(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(TESTS)
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*skipped in CI (CI=true)*redis-server missing*"])


def test_outside_ci_they_stay_skips(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(TESTS)
    monkeypatch.delenv("CI", raising=False)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=2)
