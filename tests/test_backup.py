"""cslr/backup.py's pure parts: names, psql answers, manifests and damaged archives (the engine
calls are exercised by tests/e2e/test_backup.py on the real engine)."""

from __future__ import annotations

import datetime as dt
import json
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cslr import backup


def test_archive_name_is_utc_and_sortable():
    when = dt.datetime(2026, 12, 6, 1, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    assert backup.archive_name("cslr", when) == "cslr-cslr-20261205T160203Z.tar"


def test_parse_counts_and_stats():
    assert backup.parse_counts("runs|3\nmetrics|180\n") == {"runs": 3, "metrics": 180}
    assert backup.parse_stats("4 1200\n") == (4, 1200)
    assert "SELECT 'runs', count(*) FROM runs" in backup.counts_query()


@given(st.text(max_size=80))
def test_hostile_psql_answers_are_errors_not_tracebacks(text):
    try:
        backup.parse_counts(text)
        backup.parse_stats(text)
    except backup.BackupError:
        pass


def test_emptiness_and_mismatches():
    assert backup.is_empty({"runs": 0, "experiments": 1}, (0, 0))
    assert not backup.is_empty({"runs": 1}, (0, 0)) and not backup.is_empty({"runs": 0}, (1, 10))
    manifest = {"counts": {"runs": 2, "metrics": 10}, "artifacts": [1, 5]}
    assert backup.mismatches(manifest, {"runs": 2, "metrics": 10}, (1, 5)) == []
    got = backup.mismatches(manifest, {"runs": 2, "metrics": 9}, (1, 6))
    assert got == ["metrics: 9 rows, the backup has 10", "artifacts: 1 files / 6 bytes, the backup has 1 / 5"]


def _archive(tmp_path, damage=False):
    work = tmp_path / "w"
    work.mkdir()
    (work / "mlflow.pgdump").write_bytes(b"PGDMP" + b"x" * 100)
    manifest = {"sha256": {"mlflow.pgdump": backup.sha256_file(work / "mlflow.pgdump")}, "counts": {}, "artifacts": [0, 0]}
    if damage:
        (work / "mlflow.pgdump").write_bytes(b"PGDMP" + b"y" * 100)
    (work / "manifest.json").write_text(json.dumps(manifest))
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(work / "manifest.json", arcname="manifest.json")
        tar.add(work / "mlflow.pgdump", arcname="mlflow.pgdump")
    return path


def test_read_manifest_checks_every_member(tmp_path):
    assert backup.read_manifest(_archive(tmp_path))["counts"] == {}
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(backup.BackupError, match="does not match its checksum"):
        backup.read_manifest(_archive(bad, damage=True))
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar")
    with pytest.raises(backup.BackupError, match="not a readable cslr backup"):
        backup.read_manifest(junk)


def test_notebooks_are_never_overwritten(tmp_path):
    src = tmp_path / "nb"
    src.mkdir()
    (src / "start.py").write_text("print('backed up')\n")
    (src / "__marimo__").mkdir()
    (src / "__marimo__" / "cache").write_text("x")
    tgz = tmp_path / "nb.tar.gz"
    backup._tar_folder(src, tgz)
    empty = tmp_path / "empty"
    assert backup._restore_notebooks(tgz, empty) == empty and (empty / "start.py").read_text() == "print('backed up')\n"
    assert not (empty / "__marimo__").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "start.py").write_text("print('mine, newer')\n")
    beside = backup._restore_notebooks(tgz, busy)
    assert beside != busy and beside.name.startswith("busy.restored-") and (busy / "start.py").read_text() == "print('mine, newer')\n"


def test_notebook_archives_cannot_write_outside_the_folder(tmp_path):
    import io

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("../escaped.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(backup.BackupError, match="outside the folder"):
        backup._restore_notebooks(evil, tmp_path / "nb")
    assert not (tmp_path / "escaped.py").exists()
