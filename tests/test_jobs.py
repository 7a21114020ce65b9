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
    assert table.splitlines()[1].split() == ["raysubmit_1", "RUNNING", "2026-11-29", "06:35:43", "-", "-", "python", "train.py"]


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
    assert text.splitlines()[-1] == jobs.LOST_NOTE and "--on-head" in jobs.LOST_NOTE and "--retries" in jobs.LOST_NOTE
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


# --------------------------------------------------------------------------- survival: retries


@pytest.mark.parametrize(
    "status,message,lost,retried",
    [
        ("SUCCEEDED", "Job finished successfully.", False, False),
        ("STOPPED", "Job was intentionally stopped.", False, False),
        ("FAILED", "Job entrypoint command failed with exit code 1, last available logs ...", False, False),  # the code's own failure
        ("FAILED", "Job entrypoint command failed with exit code 2", False, False),  # bad input
        ("FAILED", f"Job entrypoint command failed with exit code {jobs.RETRY_EXIT}, last available logs", False, True),
        ("FAILED", "Job entrypoint command failed with exit code -9", False, True),
        ("FAILED", "Unexpected error occurred: failed to get job supervisor.", False, True),
        ("FAILED", "Job supervisor actor died: node died", False, True),
        ("FAILED", "", False, False),
        ("RUNNING", "", True, True),  # RUNNING* at a head failure
        ("", "", True, True),  # the new head does not know it
    ],
)
def test_retry_reason_retries_node_losses_not_the_codes_own_failures(status, message, lost, retried):
    assert (jobs.retry_reason(status, message, lost) is not None) is retried


@given(st.integers(1, 20), st.integers(0, 20), st.booleans())
def test_should_retry_at_most_retries_times_and_only_for_a_reason(attempt, retries, node_loss):
    reason = "node died" if node_loss else None
    assert jobs.should_retry(reason, attempt, retries) is (node_loss and attempt <= retries)


def test_a_run_has_at_most_retries_plus_one_attempts():
    attempts = 1
    while jobs.should_retry("node died", attempts, 3):
        attempts += 1
    assert attempts == 4 and [jobs.attempt_id("r", n) for n in (1, 2, 4)] == ["r", "r-retry1", "r-retry3"]


@given(st.text(max_size=12))
def test_parse_retries_takes_whole_numbers_up_to_the_limit_and_says_what_it_found(text):
    value = text.strip()
    if value.isascii() and value.isdigit() and int(value) <= jobs.MAX_RETRIES:
        assert jobs.parse_retries(text) == int(value)
    else:
        with pytest.raises(ValueError, match=r"--retries: found .*expected a whole number from 0 to 100"):
            jobs.parse_retries(text)


def test_parse_retries_default():
    assert jobs.parse_retries(None) == jobs.DEFAULT_RETRIES >= 1 and jobs.parse_retries(0) == 0


def test_driver_placement_auto_keeps_it_off_the_head_only_when_another_node_lives():
    assert jobs.choose_driver("auto", NODES)[0] is True
    off, why = jobs.choose_driver("auto", NODES[:2])  # the head alone
    assert off is False and "only live node" in why
    assert jobs.choose_driver("auto", None)[0] is False  # node table unreadable: Ray's default
    assert jobs.choose_driver("head", NODES)[0] is False and "--on-head" in jobs.choose_driver("head", NODES)[1]
    assert jobs.choose_driver("off-head", NODES[:2])[0] is True  # insists: off_head_selector refuses it later


def test_survival_line_says_what_was_chosen_and_how_to_turn_it_off(project):
    on = config.load(project("ray:\n  gcs_fault_tolerance: auto\n"), environ={})
    off = config.load(project("{}\n"), environ={})  # the default: off (Ray's Redis password in argv)
    line = jobs.survival_line(on, "driver off the head (--on-head: Ray's default)", 2, True)
    assert "GCS fault tolerance on (off: ray.gcs_fault_tolerance: false)" in line and "up to 2 retries" in line and "--retries 0" in line
    assert "GCS fault tolerance off" in jobs.survival_line(off, "x", 1, True) and "up to 1 retry " in jobs.survival_line(off, "x", 1, True)
    assert "no retries (--no-wait: nothing follows" in jobs.survival_line(on, "x", 2, False)


def test_resumed_from_reads_the_examples_line():
    logs = "epoch 1\nresumed from checkpoint /workspace/checkpoints/r/epoch-3 (epoch 3 of 6)\nepoch 4\n"
    assert jobs.resumed_from(logs) == "/workspace/checkpoints/r/epoch-3 (epoch 3 of 6)"
    assert jobs.resumed_from("epoch 1\n") is None


def test_the_job_table_shows_attempts_and_where_each_retry_resumed():
    listed = [
        {"submission_id": "run", "status": "FAILED", "start_time": 1, "metadata": {"cslr_attempt": "1"}, "entrypoint": "python train.py"},
        {"submission_id": "run-retry1", "status": "SUCCEEDED", "start_time": 2, "metadata": {"cslr_attempt": "2"}, "entrypoint": "python train.py"},
        {"submission_id": "other", "status": "SUCCEEDED", "start_time": 3, "entrypoint": "python x.py"},
    ]
    rows = jobs.format_jobs(listed, resumed={"run-retry1": "epoch 4"}).splitlines()
    assert rows[0].split()[:7] == ["SUBMISSION", "ID", "STATUS", "START", "(UTC)", "ATTEMPT", "RESUMED"]
    assert [r.split()[:2] + r.split()[4:7] for r in rows[1:]] == [
        ["run", "FAILED", "1", "-", "python"],
        ["run-retry1", "SUCCEEDED", "2", "epoch", "4"],
        ["other", "SUCCEEDED", "-", "-", "python"],
    ]


class _Flaky:
    """A Jobs API stand-in that follows a script of answers per job id (lists are consumed)."""

    def __init__(self, script: dict, nodes=NODES):
        self.script, self.node_table, self.posts, self.stops, self.uploads = script, nodes, [], [], 0
        self.base = "http://stand-in"

    def request(self, method, path, body=None, ok404=False):
        job = path.rsplit("/", 1)[-1]
        answers = self.script[job]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def logs(self, job_id):
        return f"log of {job_id}\n"

    def nodes(self):
        return self.node_table

    def stop(self, job_id):
        self.stops.append(job_id)
        return True

    def upload(self, name, data):
        self.uploads += 1
        return True

    def submit(self, entrypoint, working_dir=None, submission_id=None, metadata=None, off_head=False, env_vars=None):
        self.posts.append({"id": submission_id, "metadata": metadata, "off_head": off_head, "env": env_vars})
        return submission_id


def _run_submit(project, tmp_path, monkeypatch, client, retries=2):
    (tmp_path / "job").mkdir(exist_ok=True)
    (tmp_path / "job" / "train.py").write_text("print(1)\n")
    monkeypatch.setattr(jobs, "client_for", lambda cfg: client)
    cfg = config.load(project("{}\n"), environ={})
    out: list[str] = []
    ticks = iter(range(0, 10**6, 3))
    code = jobs.submit(
        cfg, "python train.py", tmp_path / "job", name="r", follow=True, out=out.append, retries=retries, sleep=lambda s: None, clock=lambda: next(ticks)
    )
    return code, "\n".join(out)


def test_submit_retries_a_job_lost_at_a_head_failure_and_keeps_the_runs_id(project, tmp_path, monkeypatch):
    client = _Flaky(
        {
            # the first attempt: running, then the dashboard is away (the failover), then unknown to the new head
            "r": [{"status": "RUNNING"}, jobs.JobError("does not answer"), jobs.JobError("does not answer"), None],
            "r-retry1": [{"status": "RUNNING"}, {"status": "SUCCEEDED", "message": "Job finished successfully."}],
        }
    )
    code, out = _run_submit(project, tmp_path, monkeypatch, client)
    assert code == 0, out
    assert [p["id"] for p in client.posts] == ["r", "r-retry1"]
    assert [p["env"] for p in client.posts] == [{"CSLR_RUN_ID": "r", "CSLR_ATTEMPT": "1"}, {"CSLR_RUN_ID": "r", "CSLR_ATTEMPT": "2"}]
    assert client.posts[1]["metadata"] == {"cslr_run": "r", "cslr_attempt": "2", "cslr_retry_of": "r", "cslr_retry_reason": "its driver's node is gone"}
    assert all(p["off_head"] for p in client.posts)  # two live nodes: the driver off the head by default
    assert client.uploads == 2  # the package again for the retry (a re-formed cluster lacks it)
    assert out.splitlines()[1].startswith("survival: GCS fault tolerance off") and "retrying (1 of 2)" in out and "job r-retry1 SUCCEEDED" in out


def test_submit_does_not_retry_the_codes_own_failure_nor_past_the_limit(project, tmp_path, monkeypatch):
    failed = {"status": "FAILED", "message": "Job entrypoint command failed with exit code 1"}
    client = _Flaky({"r": [failed]})
    code, out = _run_submit(project, tmp_path, monkeypatch, client)
    assert code == 1 and [p["id"] for p in client.posts] == ["r"] and "retrying" not in out
    lost = {"status": "FAILED", "message": "Unexpected error occurred: failed to get job supervisor."}
    client = _Flaky({"r": [lost], "r-retry1": [lost]})
    code, out = _run_submit(project, tmp_path, monkeypatch, client, retries=1)
    assert code == 1 and [p["id"] for p in client.posts] == ["r", "r-retry1"] and "not retried: 1 retry used of 1" in out


def test_submit_stops_and_retries_a_job_whose_driver_node_is_gone(project, tmp_path, monkeypatch):
    client = _Flaky({"r": [{"status": "RUNNING", "driver_node_id": OLD}], "r-retry1": [{"status": "SUCCEEDED"}]})
    code, out = _run_submit(project, tmp_path, monkeypatch, client)
    assert code == 0 and client.stops == ["r"] and [p["id"] for p in client.posts] == ["r", "r-retry1"], out


def test_following_gives_up_on_a_dashboard_that_never_answers(project, tmp_path, monkeypatch):
    client = _Flaky({"r": [jobs.JobError("the Ray dashboard does not answer")]})
    with pytest.raises(jobs.JobError, match="for 300 s while following r"):
        _run_submit(project, tmp_path, monkeypatch, client)
