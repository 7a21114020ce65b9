"""Whose stack is this (cslr/identity.py): ownership of a Compose project's containers and
volumes by folder, and secret fingerprints on data volumes. Labels from the engine are input:
the decisions are tested on hostile ones too."""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cslr import config, identity, lifecycle, stack
from cslr.identity import OWNER_LABEL, PROJECT_LABEL, SECRET_LABEL, VOLUME_LABEL, WORKING_DIR_LABEL, Item

A, B = "/home/ann/cslr", "/home/bob/cslr"
NEVER_GONE = lambda path: False  # noqa: E731
ALWAYS_GONE = lambda path: True  # noqa: E731


def container(working_dir, name="cslr-ray-cpu-1"):
    return Item("container", name, {PROJECT_LABEL: "cslr", WORKING_DIR_LABEL: working_dir})


def volume(owner=None, name="cslr_postgres-data", key="postgres-data", secret=None):
    labels = {PROJECT_LABEL: "cslr", VOLUME_LABEL: key}
    if owner is not None:
        labels[OWNER_LABEL] = owner
    if secret is not None:
        labels[SECRET_LABEL] = secret
    return Item("volume", name, labels)


# ----------------------------------------------------------------------------- ownership


@pytest.mark.parametrize(
    "working_dir, folder",
    [(f"{A}/_build", A), (f"{A}/compose", A), ("/srv/out", "/srv/out"), (f"{A}/_build/", A), (f"{A}//_build", A)],
)
def test_a_containers_folder_is_its_clone(working_dir, folder):
    assert identity.owner_folder(container(working_dir)) == folder


@pytest.mark.parametrize("working_dir", ["", "relative/_build", None, 7, "/a\0b"])
def test_an_unreadable_working_dir_names_no_folder(working_dir):
    item = Item("container", "c", {WORKING_DIR_LABEL: working_dir} if working_dir is not None else {})
    assert identity.owner_folder(item) is None


def test_our_own_objects_are_not_refused():
    items = [container(f"{A}/_build"), container(f"{A}/compose"), volume(A)]
    verdict = identity.decide(items, A, f"{A}/_build", NEVER_GONE)
    assert (verdict.foreign, verdict.adopted, verdict.unknown) == ({}, {}, [])


def test_a_custom_out_dir_outside_the_folder_is_ours():
    verdict = identity.decide([container("/srv/builds/a")], A, "/srv/builds/a", NEVER_GONE)
    assert verdict.foreign == {}


def test_another_existing_folders_containers_and_volumes_are_foreign():
    items = [container(f"{A}/_build"), volume(A), volume(None, "cslr_ray-temp", "ray-temp")]
    verdict = identity.decide(items, B, f"{B}/_build", NEVER_GONE)
    assert verdict.foreign == {A: ["container cslr-ray-cpu-1", "volume cslr_postgres-data"]}
    assert verdict.unknown == ["volume cslr_ray-temp"]


def test_a_prefix_of_the_folder_name_is_not_the_folder():
    # /home/ann/cslr2 is not inside /home/ann/cslr
    verdict = identity.decide([volume(A + "2")], A, f"{A}/_build", NEVER_GONE)
    assert A + "2" in verdict.foreign


def test_objects_of_a_folder_that_is_gone_are_taken_over():
    verdict = identity.decide([container(f"{A}/_build"), volume(A)], B, f"{B}/_build", ALWAYS_GONE)
    assert verdict.foreign == {}
    assert verdict.adopted == {A: ["container cslr-ray-cpu-1", "volume cslr_postgres-data"]}
    assert "no longer exists" in identity.notes(verdict)[0]


def test_refusal_names_the_owner_folder_and_both_ways_out():
    verdict = identity.decide([container(f"{A}/_build")], B, f"{B}/_build", NEVER_GONE)
    text = identity.refusal("cslr", B, verdict, "up")
    assert A in text and B in text and "'cslr'" in text
    assert "inv init --project NAME" in text
    assert f"cd {A} && inv up" in text
    assert identity.refusal("cslr", B, identity.Verdict(), "up") is None


def test_a_folder_we_may_not_look_into_is_not_gone(tmp_path):
    assert identity.folder_gone(str(tmp_path / "absent"))
    assert not identity.folder_gone(str(tmp_path))
    (tmp_path / "file").write_text("")
    assert identity.folder_gone(str(tmp_path / "file" / "below"))  # ENOTDIR: certainly no folder


labels_st = st.dictionaries(
    st.sampled_from([WORKING_DIR_LABEL, OWNER_LABEL, PROJECT_LABEL, VOLUME_LABEL, SECRET_LABEL]) | st.text(max_size=20),
    st.text(max_size=60) | st.sampled_from([A, f"{A}/_build", B, f"{B}/compose", "/", "/_build", "//x/..//_build"]),
    max_size=5,
)
items_st = st.lists(st.builds(Item, st.sampled_from(["container", "volume"]), st.text(max_size=30), labels_st), max_size=8)


@given(items_st, st.booleans())
def test_decide_sorts_every_hostile_item_once_and_refuses_only_absolute_foreign_owners(items, gone):
    verdict = identity.decide(items, B, f"{B}/_build", lambda p: gone)
    sorted_out = sum(len(v) for v in verdict.foreign.values()) + sum(len(v) for v in verdict.adopted.values()) + len(verdict.unknown)
    assert sorted_out <= len(items)
    for owner in [*verdict.foreign, *verdict.adopted]:
        assert owner.startswith("/") and not identity.is_within(owner, B)
    assert not (gone and verdict.foreign)
    message = identity.refusal("cslr", B, verdict, "ps")
    if message is not None:
        assert all(line.isprintable() for line in message.splitlines())


# ----------------------------------------------------------------------------- fingerprints


def test_a_fingerprint_opens_with_its_secret_only_and_never_holds_it():
    label = identity.fingerprint("s3cret-password")
    assert identity.opens("s3cret-password", label) is True
    assert identity.opens("s3cret-passwore", label) is False
    assert identity.opens("", label) is False
    assert "s3cret" not in label
    assert identity.fingerprint("s3cret-password") != label  # a fresh salt each time
    assert len(label) < 128  # fits a label comfortably


def test_a_fingerprint_is_deterministic_for_a_given_salt():
    salt = bytes(range(16))
    assert identity.fingerprint("x", salt) == identity.fingerprint("x", salt)
    assert identity.fingerprint("x", salt) != identity.fingerprint("y", salt)


@pytest.mark.parametrize(
    "label",
    [
        None,
        "",
        "plain-text",
        "scrypt$16384$8$1$$",
        "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,  # n = 2**30: a memory bomb, refused unread
        "scrypt$16383$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,  # not a power of two
        "scrypt$16384$99$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
        "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAA",  # short hash
        "bcrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
        "scrypt$１６$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,  # non-ASCII digits
    ],
)
def test_an_unreadable_fingerprint_is_neither_yes_nor_no(label):
    assert identity.opens("secret", label) is None


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300) | st.builds(lambda parts: "$".join(parts), st.lists(st.text(max_size=30), min_size=6, max_size=6)))
def test_hostile_fingerprint_labels_never_raise(label):
    assert identity.opens("secret", label) in (None, False)


def test_secret_checks_name_the_volume_the_variable_and_the_way_out():
    env = {"POSTGRES_PASSWORD": "new", "REDIS_PASSWORD": "same"}
    volumes = [
        volume(A, secret=identity.fingerprint("old")),
        volume(A, "cslr_redis-data", "redis-data", identity.fingerprint("same")),
        volume(A, "cslr_old", "old-key"),
    ]
    checks = identity.check_secrets(volumes, {"postgres-data": "POSTGRES_PASSWORD", "redis-data": "REDIS_PASSWORD"}, env)
    assert [(c.volume, c.result) for c in checks] == [("cslr_postgres-data", False), ("cslr_redis-data", True)]
    text = identity.secret_refusal(checks, "/x/.env")
    assert "cslr_postgres-data" in text and "POSTGRES_PASSWORD" in text and "redis" not in text
    assert "docs/stacks.md#a-lost-env" in text and "inv down --volumes --yes" in text and "new" not in text.split("\n")[1]
    assert "/x/_build/.env" in identity.secret_refusal(checks, "/x/.env", "/x/_build/.env")


def test_a_volume_without_a_fingerprint_is_a_note_not_a_refusal():
    checks = identity.check_secrets([volume(A)], {"postgres-data": "POSTGRES_PASSWORD"}, {"POSTGRES_PASSWORD": "x"})
    assert identity.secret_refusal(checks, ".env") is None
    assert "no secret fingerprint" in identity.secret_notes(checks)[0]


def test_the_declared_name_decides_the_key_over_a_label():
    hand_made = Item("volume", "cslr_postgres-data", {})
    checks = identity.check_secrets([hand_made], {"postgres-data": "POSTGRES_PASSWORD"}, {}, {"cslr_postgres-data": "postgres-data"})
    assert [(c.volume, c.result) for c in checks] == [("cslr_postgres-data", None)]


# ----------------------------------------------------------------------------- the engine (fake docker)


class FakeDocker:
    """The `docker` calls of identity.Engine over an in-memory engine."""

    def __init__(self, containers=(), volumes=(), down=False):
        self.containers = {c.name: c for c in containers}
        self.volumes = {v.name: v for v in volumes}
        self.down, self.calls = down, []

    def __call__(self, argv, **kw):
        self.calls.append(argv)
        ok = lambda out: subprocess.CompletedProcess(argv, 0, out, "")  # noqa: E731
        if self.down:
            return subprocess.CompletedProcess(argv, 1, "", "Cannot connect to the Docker daemon")
        if argv[:2] == ["docker", "ps"]:
            project = argv[-1].split("=", 2)[2]
            return ok("".join(f"{n}\n" for n, c in self.containers.items() if c.labels.get(PROJECT_LABEL) == project))
        if argv[:3] == ["docker", "container", "inspect"]:
            return ok(json.dumps([{"Name": "/" + n, "Config": {"Labels": dict(self.containers[n].labels)}} for n in argv[3:]]))
        if argv[:4] == ["docker", "volume", "ls", "-q"]:
            if "--filter" in argv:
                project = argv[-1].split("=", 2)[2]
                return ok("".join(f"{n}\n" for n, v in self.volumes.items() if v.labels.get(PROJECT_LABEL) == project))
            return ok("".join(f"{n}\n" for n in self.volumes))
        if argv[:3] == ["docker", "volume", "inspect"]:
            return ok(json.dumps([{"Name": n, "Labels": dict(self.volumes[n].labels) or None} for n in argv[3:]]))
        if argv[:3] == ["docker", "volume", "create"]:
            labels = dict(a.split("=", 1) for a in argv[4:-1:2])
            self.volumes[argv[-1]] = Item("volume", argv[-1], labels)
            return ok(argv[-1] + "\n")
        raise AssertionError(f"unexpected call {argv}")


SCOPE_B = identity.Scope("cslr", B, f"{B}/_build", {"postgres-data": "cslr_postgres-data", "ray-temp": "cslr_ray-temp"})


def test_claim_refuses_with_exit_2_a_stack_another_folder_runs():
    docker = FakeDocker([container(f"{A}/_build")], [volume(A)])
    with pytest.raises(identity.IdentityError) as info:
        identity.claim(SCOPE_B, identity.Engine(docker), "logs", gone=NEVER_GONE)
    assert info.value.exit_code == 2 and A in str(info.value) and "inv logs" in str(info.value)


def test_claim_finds_volumes_left_after_down_by_their_owner_label():
    docker = FakeDocker([], [volume(A)])
    with pytest.raises(identity.IdentityError, match="volume cslr_postgres-data"):
        identity.claim(SCOPE_B, identity.Engine(docker), "up", gone=NEVER_GONE)


def test_claim_ignores_other_projects_and_passes_without_an_engine():
    other = Item("container", "x", {PROJECT_LABEL: "other", WORKING_DIR_LABEL: f"{A}/_build"})
    assert identity.claim(SCOPE_B, identity.Engine(FakeDocker([other])), "ps", gone=NEVER_GONE) == []
    assert identity.claim(SCOPE_B, identity.Engine(FakeDocker(down=True)), "ps", gone=NEVER_GONE) == []


def test_create_volumes_labels_owner_and_fingerprint_and_keeps_existing_ones():
    docker = FakeDocker([], [volume(B, "cslr_ray-temp", "ray-temp")])
    engine = identity.Engine(docker)
    lines = identity.create_volumes(SCOPE_B, engine, {"postgres-data": "POSTGRES_PASSWORD"}, {"POSTGRES_PASSWORD": "pw-secret-0123456789"})
    assert lines and "cslr_postgres-data" in lines[0] and "ray-temp" not in lines[0]
    made = docker.volumes["cslr_postgres-data"].labels
    assert made[OWNER_LABEL] == B and made[PROJECT_LABEL] == "cslr" and made[VOLUME_LABEL] == "postgres-data"
    assert identity.opens("pw-secret-0123456789", made[SECRET_LABEL]) is True
    assert not any("pw-secret-0123456789" in arg for call in docker.calls for arg in call)  # the secret is never on a command line
    # And the next `up` with the same .env passes; with another it is refused before anything else.
    assert identity.check_data(SCOPE_B, engine, {"postgres-data": "POSTGRES_PASSWORD"}, {"POSTGRES_PASSWORD": "pw-secret-0123456789"}, ".env") == []
    with pytest.raises(identity.IdentityError, match="POSTGRES_PASSWORD"):
        identity.check_data(SCOPE_B, engine, {"postgres-data": "POSTGRES_PASSWORD"}, {"POSTGRES_PASSWORD": "other"}, ".env")


@given(st.text(max_size=200))
def test_hostile_engine_output_gives_no_items_or_well_formed_ones(text):
    engine = identity.Engine(lambda argv, **kw: subprocess.CompletedProcess(argv, 0, "x\n" if "-aq" in argv or argv[-1] == "-q" else text, ""))
    for items in (engine.containers("cslr"), engine.volumes("cslr", ["x"])):
        assert all(isinstance(i.labels, dict) and all(isinstance(v, str) for v in i.labels.values()) for i in items or [])


def test_declared_volumes_skip_external_and_driver_volumes():
    doc = {"volumes": {"a": {"name": "p_a"}, "b": None, "c": {"external": True}, "d": {"driver": "nfs"}}}
    assert identity.declared_volumes(doc, "p") == {"a": "p_a", "b": "p_b"}


# ----------------------------------------------------------------------------- inv up, phase 1


def generated(project, tmp_path, folder_env=None):
    build = tmp_path / "_build"
    build.mkdir()
    (build / "compose.yaml").write_text(
        "services:\n"
        "  postgres: {profiles: [mlflow], volumes: [{type: volume, source: postgres-data, target: /var/lib/postgresql/data}]}\n"
        "  redis: {profiles: [redis], volumes: [{type: volume, source: redis-data, target: /data}]}\n"
        "volumes:\n  postgres-data: {name: cslr_postgres-data}\n  redis-data: {name: cslr_redis-data}\n"
    )
    (build / ".env").write_text("COMPOSE_PROFILES=mlflow\nPOSTGRES_PASSWORD=pg-secret\nREDIS_PASSWORD=redis-secret\n")
    return build


def test_up_phase_one_checks_only_the_data_volumes_its_services_mount(project, tmp_path):
    build = generated(project, tmp_path)
    st_ = stack.Stack(config.load(project("{}\n"), environ={}), build)
    assert lifecycle.data_secrets(st_) == {"postgres-data": "POSTGRES_PASSWORD"}


def test_up_fingerprints_a_switched_off_services_volume_it_creates(project, tmp_path):
    # Issue 17's CI log: redis off, its volume created unlabelled by the first `inv up`, and the
    # second `inv up` said "redis-data has no secret fingerprint (created by an older version or
    # by hand)" - untrue. The volume is made with .env's secret, which opens it when redis is on.
    build = generated(project, tmp_path)
    st_ = stack.Stack(config.load(project("{}\n"), environ={}), build)
    assert lifecycle.fingerprinted(st_) == {"postgres-data": "POSTGRES_PASSWORD", "redis-data": "REDIS_PASSWORD"}
    (build / ".env").write_text("COMPOSE_PROFILES=mlflow\nPOSTGRES_PASSWORD=pg-secret\nREDIS_PASSWORD=\n")
    st_ = stack.Stack(config.load(project("{}\n"), environ={}), build)
    assert lifecycle.fingerprinted(st_) == {"postgres-data": "POSTGRES_PASSWORD"}  # no secret: no fingerprint to promise


def test_up_phase_one_refuses_a_new_env_over_old_data_before_anything_starts(project, tmp_path):
    build = generated(project, tmp_path)
    folder = str(tmp_path.resolve())
    docker = FakeDocker([], [volume(folder, secret=identity.fingerprint("the-old-password"))])
    st_ = stack.Stack(config.load(project("{}\n"), environ={}), build, run=docker)
    with pytest.raises(identity.IdentityError) as info:
        lifecycle.claim_for_up(st_, identity.Engine(docker))
    assert info.value.exit_code == 2 and "cslr_postgres-data" in str(info.value)
    assert not any(call[:3] == ["docker", "volume", "create"] or "up" in call for call in docker.calls)


def test_up_refuses_before_it_regenerates_the_project(project, tmp_path):
    # `inv up` checks the data volumes before `generate` rewrites _build/.env, which may still hold
    # the secrets that made the data: the refusal points at it.
    build = generated(project, tmp_path)
    cfg = config.load(project("{}\n"), environ={})
    folder = str(tmp_path.resolve())
    docker = FakeDocker([], [volume(folder, secret=identity.fingerprint("pg-secret"))])
    assert lifecycle.claim_before_generate(cfg, build, run=docker) == []  # conftest's .env: POSTGRES_PASSWORD=pg-secret
    docker = FakeDocker([], [volume(folder, secret=identity.fingerprint("another"))])
    with pytest.raises(identity.IdentityError, match=str(build / ".env")):
        lifecycle.claim_before_generate(cfg, build, run=docker)


def test_a_failure_with_postgres_refusing_the_password_says_why():
    logs = 'mlflow-1  | sqlalchemy.exc.OperationalError: FATAL:  password authentication failed for user "mlflow"\n'
    [text] = lifecycle.diagnose(logs)
    assert "POSTGRES_PASSWORD" in text and "docs/stacks.md" in text
    assert lifecycle.diagnose("mlflow-1  | Listening at: http://0.0.0.0:5000\n") == []
