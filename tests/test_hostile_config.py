"""Property tests (hypothesis): hostile values at every path of the schema and of the shipped
config.yaml, and random bytes in config.yaml and .env.

The property, for every input: loading + validation either succeeds or raises a PlatformError
with exit code 2 whose every line starts with a position (`file[:line[:col]]: `) - never any
other exception, never a traceback. A few cases also run through `.venv/bin/inv validate` in a
subprocess under a 1 GiB address-space limit and a timeout, which bound its memory and time.
"""

from __future__ import annotations

import copy
import re
import resource
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cslr import config, validate
from cslr.errors import ConfigError, PlatformError
from tests.conftest import ROOT, SECRETS, write_project

SHIPPED_TEXT = (ROOT / "config.yaml").read_text()
SHIPPED = yaml.safe_load(SHIPPED_TEXT)
POSITION = re.compile(r"^(?:config\.yaml|\.env)(?::\d+(?::\d+)?)?: |^(?:environment \$\w+|schema default|nodes\.yaml): ")


# Function-scoped tmp_path is reused across examples on purpose: each example rewrites the files.
def cases(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def schema_paths(node: dict, path: tuple = ()) -> list[tuple]:
    """Every path the schema describes; `0` stands for an array item."""
    out = [path] if path else []
    for key, sub in node.get("properties", {}).items():
        out += schema_paths(sub, (*path, key))
    if isinstance(node.get("items"), dict):
        out += schema_paths(node["items"], (*path, 0))
    return out


def data_paths(data, path: tuple = ()) -> list[tuple]:
    out = [path] if path else []
    if isinstance(data, dict):
        for key, value in data.items():
            out += data_paths(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += data_paths(value, (*path, i))
    return out


@pytest.fixture(autouse=True)
def _in_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # messages name files as a user beside config.yaml sees them


PATHS = sorted(set(schema_paths(config.schema())) | set(data_paths(SHIPPED)), key=str)
ONE_HOST = {"name": "host-a", "address": "10.0.0.1"}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["", "on", "off", "0.0.0.0", "ray-cpu", "10.0.0.1", "6379", "16g", "-1", "1e400", "~", "null"]),
)
hostile = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def put(data: dict, path: tuple, value) -> dict:
    """A copy of `data` with `value` at `path`, creating what is missing on the way."""
    out = copy.deepcopy(data)
    node = out
    for part, nxt in zip(path, path[1:]):
        if isinstance(part, int):
            while len(node) <= part:
                node.append(dict(ONE_HOST) if nxt in ONE_HOST or nxt in ("gpu", "services") else {})
            child = node[part]
        else:
            child = node.get(part)
            if not isinstance(child, (dict, list)):
                child = node[part] = [] if isinstance(nxt, int) else {}
        node = child
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list):
            return out
        while len(node) <= last:
            node.append(None)
    node[last] = value
    return out


def outcome(path: Path, **kw) -> PlatformError | None:
    """Load + validate; None if valid, else the PlatformError. Anything else fails the test."""
    try:
        validate.validate(config.load(path, environ={}, **kw))
    except PlatformError as exc:
        return exc
    return None


def assert_clean_refusal(err: PlatformError | None) -> None:
    if err is None:
        return
    text = str(err)
    assert err.exit_code == 2, text
    assert "Traceback" not in text
    lines = [str(p) for p in err.problems if p.severity == "error"] if isinstance(err, ConfigError) else [text]
    assert lines, text
    for line in lines:
        assert POSITION.match(line), line
        assert len(line) < 600, line


@cases(600)
@given(path=st.sampled_from(PATHS), value=hostile)
def test_any_value_at_any_path_is_accepted_or_refused_with_a_position(tmp_path, path, value):
    doc = put(SHIPPED, path, value)
    cfg = write_project(tmp_path, yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
    err = outcome(cfg)
    assert_clean_refusal(err)
    if isinstance(err, ConfigError):  # the only change is in config.yaml: some error points into it
        assert any(p.location.file == "config.yaml" and p.location.line for p in err.problems if p.severity == "error"), str(err)


def leaf_lines(text: str) -> list[int]:
    return [i for i, line in enumerate(text.splitlines()) if re.match(r"^\s*[a-z_]+:\s*\S", line) and not line.lstrip().startswith("#")]


LEAF_LINES = leaf_lines(SHIPPED_TEXT)


@cases(400)
@given(line=st.sampled_from(LEAF_LINES), junk=st.binary(max_size=40))
def test_random_bytes_as_any_value_of_the_shipped_file(tmp_path, line, junk):
    lines = SHIPPED_TEXT.encode().splitlines(keepends=True)
    key = lines[line].split(b":", 1)[0]
    lines[line] = key + b": " + junk + b"\n"
    cfg = write_project(tmp_path, "{}\n")
    cfg.write_bytes(b"".join(lines))
    assert_clean_refusal(outcome(cfg))


@cases(200)
@given(junk=st.binary(max_size=400))
def test_random_bytes_as_the_whole_file(tmp_path, junk):
    cfg = write_project(tmp_path, "{}\n")
    cfg.write_bytes(junk)
    assert_clean_refusal(outcome(cfg))


@cases(200)
@given(key=st.sampled_from([f.env for f in config.env_fields()]), junk=st.binary(max_size=40))
def test_random_bytes_as_any_dotenv_value(tmp_path, key, junk):
    cfg = write_project(tmp_path, SHIPPED_TEXT)
    (tmp_path / ".env").write_bytes(b"".join(f"{k}={v}\n".encode() for k, v in SECRETS.items()) + key.encode() + b"=" + junk + b"\n")
    err = outcome(cfg)
    assert_clean_refusal(err)
    if err is not None and key in SECRETS:
        assert junk.decode("utf-8", "replace").strip() not in str(err) or len(junk.strip()) < 3


# ------------------------------------------------------------------------------ through `inv`

INV = ROOT / ".venv" / "bin" / "inv"


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1024**3, 1024**3))  # a run that needs more fails


def run_inv(cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": f"{cwd}/bin:/usr/bin:/bin", "HOME": str(cwd)}  # no nvidia-smi, no config variables
    (cwd / "bin").mkdir(exist_ok=True)
    return subprocess.run([str(INV), "--search-root", str(ROOT), "validate"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, preexec_fn=_limits)


BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]) + "\n"


@pytest.mark.parametrize(
    "name, make, expected",
    [
        ("alias bomb", lambda p: p.write_text(BOMB), "config.yaml:5:10: syntax error: found more than 10000 values"),
        ("recursive alias", lambda p: p.write_text("gpu: &a [*a]\n"), "config.yaml:1:10: syntax error: found the alias *a"),
        ("python tag as key", lambda p: p.write_text("!!python/object/apply:os.system [id]: 1\n"), "config.yaml:1:1: syntax error: found the tag"),
        ("deep nesting", lambda p: p.write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n"), "config.yaml:1:35: syntax error: found nesting deeper"),
        ("latin-1", lambda p: p.write_bytes(b"gpu: caf\xe9\n"), "config.yaml:1:9: cannot read: found byte 0xe9"),
        ("wrong type", lambda p: p.write_text("hosts: [{}]\n"), "config.yaml:1:9: $.hosts[0]: missing key 'name'"),
        ("/dev/zero", lambda p: (p.unlink(), p.symlink_to("/dev/zero")), "config.yaml: cannot read: found a character device"),
    ],
)
def test_inv_validate_refuses_hostile_files_with_exit_2(tmp_path, name, make, expected):
    cfg = write_project(tmp_path)
    make(cfg)
    out = run_inv(tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_inv_validate_refuses_a_fifo_without_hanging(tmp_path):
    import os

    write_project(tmp_path)
    (tmp_path / "config.yaml").unlink()
    os.mkfifo(tmp_path / "config.yaml")
    out = run_inv(tmp_path)
    assert out.returncode == 2 and "config.yaml: cannot read: found a FIFO (named pipe), expected a regular file" in out.stderr, out.stderr


@cases(300)
@given(
    key=st.sampled_from([f.env for f in config.env_fields()] + [env for env, _ in config.REMOVED.values()]),
    raw=st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40),
)
def test_any_process_environment_value_is_accepted_or_refused_with_a_position(tmp_path, key, raw):
    cfg = write_project(tmp_path, SHIPPED_TEXT)
    try:
        validate.validate(config.load(cfg, environ={key: raw}))
    except PlatformError as exc:
        assert_clean_refusal(exc)
