"""Host folders: data sets, the workspace and the notebooks folder (cslr/hostdirs.py), and the
one-time move of notebooks out of the old named volume (cslr/notebooks.py, its pure part)."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cslr import config, hostdirs, notebooks
from cslr.errors import ConfigError
from cslr.gpu import GpuState
from cslr.project import load_validated


def messages(project, text):
    path = project(text)
    with pytest.raises(ConfigError) as exc:
        load_validated(path, detect=lambda mode: GpuState("off"))
    return [str(p) for p in exc.value.problems if p.severity == "error"]


def test_data_and_workspace_valid_folders_give_mounts(project, tmp_path):
    (tmp_path / "phoenix").mkdir()
    (tmp_path / "out").mkdir()
    loaded = load_validated(project(f"data:\n  phoenix: {tmp_path / 'phoenix'}\nworkspace: {tmp_path / 'out'}\n"), detect=lambda mode: GpuState("off"))
    assert hostdirs.mounts(loaded.cfg) == [
        hostdirs.Mount(str(tmp_path / "phoenix"), "/data/phoenix", True),
        hostdirs.Mount(str(tmp_path / "out"), "/workspace", False),
    ]


def test_relative_missing_and_file_paths_are_refused_with_their_lines(project, tmp_path):
    (tmp_path / "a-file").write_text("x")
    out = messages(project, f"data:\n  rel: datasets/phoenix\n  gone: {tmp_path / 'gone'}\n  file: {tmp_path / 'a-file'}\nworkspace: outputs\n")
    assert out == [
        "config.yaml:2:8: $.data.rel: found 'datasets/phoenix', expected an absolute host path such as /srv/datasets/rel",
        f"config.yaml:3:9: $.data.gone: found '{tmp_path / 'gone'}', which is missing on this host; expected an existing readable directory",
        f"config.yaml:4:9: $.data.file: found '{tmp_path / 'a-file'}', which is not a directory on this host; expected an existing readable directory",
        "config.yaml:5:12: $.workspace (CSLR_WORKSPACE): found 'outputs', expected an absolute host path such as /srv/datasets/outputs",
    ]


def test_a_bad_data_name_is_the_schemas_problem(project):
    out = messages(project, "data:\n  ../etc: /etc\n")
    assert len(out) == 1 and "$.data" in out[0] and "../etc" in out[0]


def test_an_unreadable_data_folder_and_a_read_only_workspace_are_refused(project, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    if os.geteuid() == 0:
        # Root passes every permission check; stand in for a normal user's os.access (the
        # kernel's answer for an unprivileged uid on these modes).
        monkeypatch.setattr(
            hostdirs.os, "access", lambda path, mode: not ((os.stat(path).st_mode & 0o777) == 0 or (mode & os.W_OK and not os.stat(path).st_mode & 0o200))
        )
    try:
        out = messages(project, f"data:\n  locked: {locked}\nworkspace: {ro}\n")
    finally:
        locked.chmod(0o755)
    assert any("$.data.locked" in m and "cannot read" in m for m in out), out
    assert any("$.workspace" in m and "cannot write" in m for m in out), out


def test_notebooks_folder_that_is_a_file_is_refused(project, tmp_path):
    (tmp_path / "nb").write_text("x")
    out = messages(project, "services:\n  marimo:\n    notebooks: nb\n")
    assert len(out) == 1 and out[0].startswith("config.yaml:3:16: $.services.marimo.notebooks (MARIMO_NOTEBOOKS): found 'nb'")


def test_notebooks_folder_is_relative_to_the_config_file(project, tmp_path):
    cfg = config.load(project("{}\n"), environ={})
    assert hostdirs.notebooks_dir(cfg) == (tmp_path / "notebooks").resolve()


def test_overlay_lists_every_mount_for_nodes_and_notebook_and_escapes_dollars(project, tmp_path):
    odd = tmp_path / "a $HOME 'quoted' dir"
    odd.mkdir()
    cfg = config.load(project(f'data:\n  odd: "{odd}"\n'), environ={})
    doc = yaml.safe_load(hostdirs.render_overlay(cfg, gpu_node=True))
    assert sorted(doc["services"]) == ["marimo", "ray-cpu", "ray-gpu"]
    vol = doc["services"]["ray-gpu"]["volumes"]
    assert vol == [{"type": "bind", "source": str(odd).replace("$", "$$"), "target": "/data/odd", "read_only": True, "bind": {"create_host_path": False}}]
    assert sorted(yaml.safe_load(hostdirs.render_overlay(cfg, gpu_node=False))["services"]) == ["marimo", "ray-cpu"]


def test_no_folders_no_overlay(project):
    assert hostdirs.render_overlay(config.load(project("{}\n"), environ={}), gpu_node=True) is None


# ------------------------------------------------------------------------- notebook migration


def test_plan_copies_new_keeps_identical_and_puts_a_different_one_beside(tmp_path):
    (tmp_path / "same.py").write_text("A")
    (tmp_path / "clash.py").write_text("mine")
    (tmp_path / "clash.from-volume.py").write_text("older")
    files = {"./new.py": b"N", "./same.py": b"A", "./clash.py": b"theirs", "./sub/deep.py": b"D", "../escape.py": b"X"}
    actions = {a.source: (a.kind, a.dest.relative_to(tmp_path).as_posix()) for a in notebooks.plan_copy(files, tmp_path)}
    assert actions == {
        "./new.py": ("copy", "new.py"),
        "./same.py": ("same", "same.py"),
        "./clash.py": ("beside", "clash.from-volume-2.py"),
        "./sub/deep.py": ("copy", "sub/deep.py"),
    }


def test_migration_from_a_tar_stream_writes_and_reports(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("./a.py", b"print(1)\n"), ("./b.py", b"print(2)\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "b.py").write_text("mine\n")
    files = notebooks.read_tar(buf.getvalue())
    actions = notebooks.plan_copy(files, tmp_path / "nb")
    notebooks.apply(actions, files)
    assert (tmp_path / "nb" / "a.py").read_text() == "print(1)\n"
    assert (tmp_path / "nb" / "b.py").read_text() == "mine\n"
    assert (tmp_path / "nb" / "b.from-volume.py").read_text() == "print(2)\n"
    lines = notebooks.summary(actions, tmp_path / "nb", "cslr_marimo-notebooks")
    assert lines[0].endswith("1 copied, 1 kept beside a different file of the same name, 0 already there")
    assert "docker volume rm cslr_marimo-notebooks" in lines[-1]


names = st.lists(st.sampled_from(["a.py", "b.py", "a.from-volume.py", "sub/a.py", "x"]), unique=True, max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    existing=st.dictionaries(st.sampled_from(["a.py", "b.py", "a.from-volume.py", "x"]), st.binary(max_size=3), max_size=4),
    volume=st.dictionaries(names.flatmap(lambda n: st.sampled_from(n) if n else st.just("a.py")), st.binary(max_size=3), max_size=5),
)
def test_migration_never_loses_or_overwrites_anything(tmp_path_factory, existing, volume):
    folder = tmp_path_factory.mktemp("nb")
    for name, data in existing.items():
        (folder / name).write_bytes(data)
    actions = notebooks.plan_copy(volume, folder)
    notebooks.apply(actions, volume)
    for name, data in existing.items():  # nothing that was there changed
        assert (folder / name).read_bytes() == data
    assert sorted(a.source for a in actions) == sorted(volume)
    for action in actions:  # every notebook of the volume is in the folder, somewhere, intact
        assert action.dest.read_bytes() == volume[action.source]


# ------------------------------------------------------------------------------ whose files


def test_host_user_is_the_invoking_users_ids_unless_the_environment_says():
    assert hostdirs.host_user({}) == (os.getuid(), os.getgid())
    assert hostdirs.host_user({}, getuid=lambda: 1001, getgid=lambda: 1002) == (1001, 1002)
    # Rootless Docker / userns-remap: container root is the user.
    assert hostdirs.host_user({"CSLR_UID": "0", "CSLR_GID": "0"}, getuid=lambda: 1001, getgid=lambda: 1002) == (0, 0)
    assert hostdirs.host_user({"CSLR_UID": "", "CSLR_GID": "77"}, getuid=lambda: 1001, getgid=lambda: 1002) == (1001, 77)


def test_a_bad_user_id_in_the_environment_is_refused_naming_it():
    with pytest.raises(ConfigError) as exc:
        hostdirs.host_user({"CSLR_UID": "alice", "CSLR_GID": "-1"})
    assert exc.value.exit_code == 2
    assert [str(p) for p in exc.value.problems] == [
        f"environment $CSLR_UID: CSLR_UID: found 'alice', expected a numeric user id such as 1000 (0..{hostdirs.ID_MAX}), or unset for the id of the user running inv",
        f"environment $CSLR_GID: CSLR_GID: found '-1', expected a numeric group id such as 1000 (0..{hostdirs.ID_MAX}), or unset for the id of the user running inv",
    ]


@given(st.text(max_size=30))
def test_host_user_takes_only_plain_ids(raw):
    plain = raw == "" or (raw.isascii() and raw.isdigit() and int(raw) <= hostdirs.ID_MAX)
    try:
        uid, gid = hostdirs.host_user({"CSLR_UID": raw}, getuid=lambda: 1001, getgid=lambda: 1002)
    except ConfigError as exc:
        assert not plain and len(exc.problems) == 1 and exc.problems[0].path == "CSLR_UID"
    else:
        assert plain and (uid, gid) == (int(raw) if raw else 1001, 1002)


def test_generated_env_records_the_user_and_compose_never_takes_it_from_the_shell(project, monkeypatch):
    from cslr import compose

    monkeypatch.delenv("CSLR_UID", raising=False)
    monkeypatch.delenv("CSLR_GID", raising=False)
    env = compose.compose_env(config.load(project("{}\n"), environ={}), GpuState("off"))
    assert (env["CSLR_UID"], env["CSLR_GID"]) == (str(os.getuid()), str(os.getgid()))
    monkeypatch.setenv("CSLR_UID", "0")
    assert compose.compose_env(config.load(project("{}\n"), environ={}), GpuState("off"))["CSLR_UID"] == "0"
    # A stale CSLR_UID in the shell would beat the env file in Compose: _build/.env alone decides.
    assert compose.subprocess_env({"PATH": "/bin", "CSLR_UID": "5", "CSLR_GID": "6"}) == {"PATH": "/bin"}


def test_files_the_user_does_not_own_are_found_and_the_note_says_how_to_take_them_back(project, tmp_path):
    cfg = config.load(project("{}\n"), environ={})
    folder = hostdirs.notebooks_dir(cfg)
    (folder / "sub").mkdir(parents=True)
    (folder / "a.py").write_text("x")
    (folder / "sub" / "b.py").write_text("y")
    me = os.getuid()
    assert hostdirs.foreign_owned(folder, me) == ([], False)
    assert hostdirs.ownership_notes(cfg, me, os.getgid()) == [] or me == 0
    # As seen by another user (the files stand for an older root-run stack's notebooks):
    other = me + 1
    found, truncated = hostdirs.foreign_owned(folder, other)
    assert [p.relative_to(folder).as_posix() for p, _ in found] == [".", "a.py", "sub", "sub/b.py"] and not truncated
    assert {owner for _, owner in found} == {me}
    assert hostdirs.foreign_owned(folder, other, limit=2) == (found[:3], True)
    assert hostdirs.foreign_owned(folder, other, recursive=False)[0] == found[:3]
    [note] = hostdirs.ownership_notes(cfg, other, 77)
    assert note.startswith(f"notebooks: 4 file(s) in {folder} belong to uid {me}, not to you (uid {other}), e.g. {folder}")
    assert note.endswith(f"Nothing was changed; to take them back: sudo chown -R {other}:77 {folder}")
    assert (folder / "a.py").stat().st_uid == me  # nothing was changed
    assert hostdirs.ownership_notes(cfg, 0, 0) == []  # root saves over anything


def test_ownership_note_quotes_an_odd_folder_and_covers_the_workspace_top_level(project, tmp_path):
    ws = tmp_path / "my work $x"
    (ws / "deep").mkdir(parents=True)
    (ws / "deep" / "file").write_text("z")
    cfg = config.load(project(f"workspace: {json.dumps(str(ws))}\n"), environ={})
    hostdirs.notebooks_dir(cfg).mkdir()
    other = os.getuid() + 1
    notes = hostdirs.ownership_notes(cfg, other, other)
    work = [n for n in notes if n.startswith("workspace:")]
    assert len(work) == 1 and "2 file(s)" in work[0] and work[0].endswith(f"sudo chown -R {other}:{other} '{ws}'")
