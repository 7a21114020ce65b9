"""cslr/upgrade.py: the Postgres major-version refusal and MLflow's schema decision, with the
engine's answers standing in (the real engine is the e2e tier's)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

from hypothesis import given
from hypothesis import strategies as st

from cslr import upgrade


def test_postgres_major_change_is_refused_with_the_backup_restore_path():
    got = upgrade.postgres_finding("15", "16", "postgres:16")
    assert len(got) == 1 and "PostgreSQL 15" in got[0] and "PostgreSQL 16" in got[0]
    assert "inv backup" in got[0] and "inv restore ARCHIVE" in got[0] and "docs/upgrading.md" in got[0]
    assert upgrade.postgres_finding("15", "15\n", "postgres:15") == []
    assert upgrade.postgres_finding(None, "16", "postgres:16") == []  # no data yet


def test_schema_action():
    assert upgrade.schema_action({"current": None, "head": "b"}) == upgrade.FRESH
    assert upgrade.schema_action({"current": "b", "head": "b"}) == upgrade.NONE
    assert upgrade.schema_action({"current": "a", "head": "b", "known": True}) == upgrade.MIGRATE
    assert upgrade.schema_action({"current": "z", "head": "b", "known": False}) == upgrade.NEWER


@given(st.lists(st.one_of(st.text(max_size=30), st.integers(), st.none()), max_size=8))
def test_pg_major_from_hostile_env_lists(env):
    got = upgrade.pg_major_from_env(env)
    assert got is None or any(isinstance(e, str) and e == "PG_MAJOR=" + got for e in env)


def test_pre_upgrade_dump_name():
    assert upgrade.pre_upgrade_name("cslr", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)) == "cslr-cslr-pre-mlflow-upgrade-20260102T030405Z.pgdump"


class FakeStack:
    project = "cslr"

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def expected_services(self):
        return ["postgres", "mlflow"]

    def env(self):
        return {"POSTGRES_IMAGE": "postgres:16"}

    def run(self, cmd, **kw):
        self.calls.append(cmd)
        for prefix, (rc, out) in self.answers.items():
            if " ".join(cmd).startswith(prefix):
                return subprocess.CompletedProcess(cmd, rc, out, "")
        return subprocess.CompletedProcess(cmd, 1, "", "unexpected")


def test_postgres_findings_reads_the_volume_and_the_image_contract():
    stack = FakeStack(
        {
            "docker volume inspect cslr_postgres-data": (0, "[]"),
            "docker image inspect --format {{json .Config.Env}} postgres:16": (0, json.dumps(["PATH=/x", "PG_MAJOR=16"])),
            "docker run --rm --network none -v cslr_postgres-data:/d:ro": (0, "15\n"),
        }
    )
    found = upgrade.postgres_findings(stack)
    assert len(found) == 1 and "PostgreSQL 15" in found[0]
    fresh = FakeStack({"docker volume inspect": (1, "")})
    assert upgrade.postgres_findings(fresh) == [] and len(fresh.calls) == 1  # no volume: nothing else asked
