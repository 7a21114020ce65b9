"""cslr/jobs.py without a cluster: which dashboard is the head's, how the working dir is
packaged (what Ray's job SDK would upload), exit codes, and the table of jobs."""

from __future__ import annotations

import http.server
import io
import json
import socket
import subprocess
import threading
import zipfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


# --------------------------------------------------------------------------- head failure

HEAD, WORKER, OLD = "a" * 56, "b" * 56, "c" * 56
NODES = [
    {"node_id": OLD, "state": "DEAD", "is_head_node": True},  # the head before a failover
    {"node_id": HEAD, "state": "ALIVE", "is_head_node": True},
    {"node_id": WORKER, "state": "ALIVE", "is_head_node": False},
]


def test_off_head_selector_excludes_the_live_head_and_refuses_when_there_is_no_worker():
    assert jobs.off_head_selector(NODES) == {"ray.io/node-id": "!" + HEAD}
    with pytest.raises(jobs.JobError, match="only live Ray node.*without --off-head"):
        jobs.off_head_selector(NODES[:2])
    with pytest.raises(jobs.JobError, match="0 live head"):
        jobs.off_head_selector(NODES[2:])


@given(
    st.lists(
        st.fixed_dictionaries(
            {"node_id": st.text("0123456789abcdef", min_size=56, max_size=56), "state": st.sampled_from(["ALIVE", "DEAD"]), "is_head_node": st.booleans()}
        ),
        max_size=6,
    )
)
def test_off_head_selector_names_the_one_live_head_or_refuses(nodes):
    alive = [n for n in nodes if n["state"] == "ALIVE"]
    heads = [n for n in alive if n["is_head_node"]]
    if len(heads) == 1 and len(alive) >= 2:
        assert jobs.off_head_selector(nodes) == {"ray.io/node-id": "!" + heads[0]["node_id"]}
    else:
        with pytest.raises(jobs.JobError, match="cannot keep the driver off the head"):
            jobs.off_head_selector(nodes)


class _Dashboard(http.server.BaseHTTPRequestHandler):
    """Stands for a Ray dashboard's Jobs REST API and state API (the real one is exercised by
    tests/integration/test_job_failover_ray.py): records what was sent, answers as Ray 2.60 does."""

    seen: list = []
    node_table: list = NODES

    def do_GET(self):
        self.seen.append(("GET", self.path, None))
        if self.path.startswith("/api/v0/nodes"):
            self._json({"result": True, "msg": "", "data": {"result": {"total": 3, "result": self.node_table}}})
        elif self.path == "/api/jobs/":
            self._json(
                [
                    {"submission_id": "lost", "status": "RUNNING", "driver_node_id": OLD, "entrypoint": "python a.py"},
                    {"submission_id": "fine", "status": "RUNNING", "driver_node_id": WORKER, "entrypoint": "python b.py"},
                ]
            )
        else:
            self._json({"detail": "no"}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("POST", self.path, body))
        self._json({"submission_id": body.get("submission_id", "raysubmit_1")})

    def _json(self, obj, code=200):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def dashboard():
    _Dashboard.seen = []
    _Dashboard.node_table = NODES
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Dashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield jobs.Client(f"http://127.0.0.1:{server.server_address[1]}", "tok"), _Dashboard
    server.shutdown()
    server.server_close()


def test_submit_off_head_sends_a_label_selector_that_excludes_the_current_head(dashboard):
    client, seen = dashboard
    assert client.submit("python t.py", "gcs://_ray_pkg_x.zip", submission_id="j1") == "j1"
    assert client.submit("python t.py", "gcs://_ray_pkg_x.zip", submission_id="j2", off_head=True) == "j2"
    posts = [body for method, _, body in seen.seen if method == "POST"]
    assert "entrypoint_label_selector" not in posts[0]  # Ray's default: the driver on the head
    assert posts[1]["entrypoint_label_selector"] == {"ray.io/node-id": "!" + HEAD}
    assert posts[1]["runtime_env"] == {"working_dir": "gcs://_ray_pkg_x.zip"} and posts[1]["entrypoint"] == "python t.py"
    seen.node_table = NODES[:2]  # a one-node cluster: refuse rather than leave the job PENDING
    with pytest.raises(jobs.JobError, match="only live Ray node"):
        client.submit("python t.py", off_head=True)
    assert len([m for m, _, _ in seen.seen if m == "POST"]) == 2


def test_the_job_table_marks_a_running_job_whose_driver_node_is_gone(dashboard):
    client, seen = dashboard
    text = jobs.list_jobs(client)
    rows = {line.split()[0]: line.split()[1] for line in text.splitlines()[1:3]}
    assert rows == {"lost": "RUNNING*", "fine": "RUNNING"}
    assert text.splitlines()[-1] == jobs.LOST_NOTE and "--off-head" in jobs.LOST_NOTE
    assert jobs.lost_drivers([{"submission_id": "p", "status": "PENDING", "driver_node_id": None}], NODES) == set()
    assert jobs.lost_drivers([{"submission_id": "s", "status": "SUCCEEDED", "driver_node_id": OLD}], NODES) == set()
    assert jobs.LOST_NOTE not in jobs.format_jobs([{"submission_id": "fine", "status": "RUNNING"}], lost={"elsewhere"})


def test_the_job_table_still_shows_when_the_node_table_cannot_be_read(dashboard):
    client, seen = dashboard
    seen.node_table = "not a table"
    text = jobs.list_jobs(client)
    assert "RUNNING*" not in text and "lost" in text and jobs.LOST_NOTE not in text


def test_list_json_marks_jobs_whose_driver_node_is_gone():
    class FakeClient:
        def list(self):
            return [
                {"submission_id": "raysubmit_a", "status": "RUNNING", "driver_node_id": "dead"},
                {"submission_id": "raysubmit_b", "status": "RUNNING", "driver_node_id": "alive"},
                {"submission_id": "raysubmit_c", "status": "SUCCEEDED", "driver_node_id": "dead"},
            ]

        def nodes(self):
            return [{"node_id": "alive", "state": "ALIVE"}, {"node_id": "dead", "state": "DEAD"}]

    got = {j["submission_id"]: j["driver_lost"] for j in jobs.list_json(FakeClient())}
    assert got == {"raysubmit_a": True, "raysubmit_b": False, "raysubmit_c": False}
