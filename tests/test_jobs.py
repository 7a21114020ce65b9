"""cslr/jobs.py without a cluster: which dashboard is the head's, how the working dir is
packaged (what Ray's job SDK would upload), exit codes, and the table of jobs."""

from __future__ import annotations

import io
import socket
import subprocess
import zipfile

import pytest

from cslr import config, jobs


def test_dashboard_is_the_health_services_proxy_whichever_node_is_head(project):
    cfg = config.load(project("services:\n  health: {dashboard_port: 18260}\n"), environ={})
    for head in ("ray-cpu:6379", "ray-gpu:6379", "ray-cpu-host-b:6379"):
        assert jobs.dashboard_url(cfg, lambda url, h=head: {"known_head": h}) == "http://127.0.0.1:18260"
    cfg = config.load(project("network: {bind_address: 10.1.2.3}\n"), environ={})
    assert jobs.proxy_dashboard(cfg) == f"http://10.1.2.3:{config.defaults()['services']['health']['dashboard_port']}"


def test_dashboard_url_asks_the_health_service_and_says_when_it_cannot(project):
    cfg = config.load(project("services:\n  health: {port: 18888}\n"), environ={})
    seen = []
    assert jobs.dashboard_url(cfg, lambda url: seen.append(url) or {"known_head": "ray-gpu:6379"}) == "http://127.0.0.1:8260"
    assert seen == ["http://127.0.0.1:18888/"]
    with pytest.raises(jobs.JobError, match="knows no head yet"):
        jobs.dashboard_url(cfg, lambda url: {"known_head": None})
    with socket.socket() as s:  # a real closed port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config.load(project(f"services:\n  health: {{port: {port}}}\n"), environ={})
    with pytest.raises(jobs.JobError, match=r"does not answer .*inv up"):
        jobs.dashboard_url(cfg)


def test_package_honours_gitignore_and_rayignore_in_a_git_work_tree(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("outputs/\n*.ckpt\n")
    (tmp_path / ".rayignore").write_text("# big inputs\nraw_*\n")
    for rel in ("train.py", "lib/model.py", "outputs/run.log", "w.ckpt", "raw_video.bin", ".venv/x.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    assert jobs.package_files(tmp_path) == [".gitignore", ".rayignore", "lib/model.py", "train.py"]


def test_package_outside_git_skips_only_tool_folders(tmp_path):
    for rel in ("train.py", "__pycache__/t.pyc", ".git/HEAD", "data/a.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)

    def no_git(*a, **k):
        return subprocess.CompletedProcess(a, 128, b"", b"not a git repository")

    assert jobs.package_files(tmp_path, run=no_git) == ["data/a.csv", "train.py"]


def test_zip_holds_the_files_at_their_relative_paths_and_the_name_follows_the_content(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / "sub" / "m.py").write_text("x = 2\n")
    name, data = jobs.build_package(tmp_path, ["sub/m.py", "train.py"])
    assert name.startswith("_ray_pkg_") and name.endswith(".zip")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["sub/m.py", "train.py"] and zf.read("train.py") == b"print(1)\n"
    assert jobs.build_package(tmp_path, ["sub/m.py", "train.py"]) == (name, data)  # deterministic
    (tmp_path / "train.py").write_text("print(2)\n")
    assert jobs.build_package(tmp_path, ["sub/m.py", "train.py"])[0] != name


def test_exit_codes_and_job_table():
    assert [jobs.exit_code(s) for s in ("SUCCEEDED", "FAILED", "STOPPED")] == [0, 1, 130]
    table = jobs.format_jobs([{"submission_id": "raysubmit_1", "status": "RUNNING", "start_time": 1795934143000, "entrypoint": "python train.py"}])
    assert table.splitlines()[1].split() == ["raysubmit_1", "RUNNING", "2026-11-29", "06:35:43", "python", "train.py"]
