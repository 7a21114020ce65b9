"""The loading pipeline's gates, one regression test per hostile input of issue 9.

Gate order: the file (regular, size cap, UTF-8) -> YAML (no tags, depth / alias / size limits)
-> the schema -> semantic rules on schema-valid subtrees only. Every refusal is a PlatformError
with exit code 2 and a `file[:line:col]` position; none is a Python traceback.
"""

from __future__ import annotations

import os
import tracemalloc

import pytest

from cslr import config, textfile, validate, yamlpos
from cslr.errors import ConfigError, ConfigFileError, ConfigSyntaxError, PlatformError


def refusal(path, environ=None, env_path=None) -> PlatformError:
    """Load and validate; return the PlatformError raised (the test fails on anything else)."""
    with pytest.raises(PlatformError) as info:
        validate.validate(config.load(path, env_path, environ=environ or {}))
    assert info.value.exit_code == 2
    return info.value


# ------------------------------------------------------------------------------ the file gate


def test_directory_is_refused(project, tmp_path):
    project()
    (tmp_path / "dir.yaml").mkdir()
    err = refusal(tmp_path / "dir.yaml")
    assert isinstance(err, ConfigFileError)
    assert str(err).endswith("dir.yaml: cannot read: found a directory, expected a regular file")


def test_fifo_is_refused_without_blocking(project, tmp_path):
    project()
    os.mkfifo(tmp_path / "fifo.yaml")  # nobody writes: opening it for reading would block forever
    assert "fifo.yaml: cannot read: found a FIFO (named pipe), expected a regular file" in str(refusal(tmp_path / "fifo.yaml"))


def test_link_to_dev_zero_is_refused_without_reading(project, tmp_path):
    project()
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    assert "zero.yaml: cannot read: found a character device, expected a regular file" in str(refusal(tmp_path / "zero.yaml"))


def test_20_mb_file_is_refused_by_its_size(project, tmp_path):
    project()
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:
        handle.truncate(20 * 1024 * 1024)  # sparse: 20 MB of NUL bytes that are never read
    assert f"big.yaml: cannot read: found {20 * 1024 * 1024} bytes, expected at most {textfile.MAX_BYTES} bytes" in str(refusal(big))


def test_read_cap_holds_when_stat_understates_the_size():
    # /proc files are regular files whose stat size is 0: only the capped read sees their length.
    assert os.stat("/proc/self/status").st_size == 0
    with pytest.raises(ConfigFileError, match=r"status: cannot read: found more than 50 bytes, expected at most 50 bytes"):
        textfile.read_text("/proc/self/status", "status", max_bytes=50)


def test_latin1_bytes_are_refused_with_line_and_column(project, tmp_path):
    path = project()
    path.write_bytes("project:\n  name: caf\xe9\n".encode("latin-1"))
    assert str(refusal(path)) == "config.yaml:2:12: cannot read: found byte 0xe9, which is not UTF-8; expected a UTF-8 text file"


def test_missing_file_says_where_it_looked(project, tmp_path):
    project()
    err = refusal(tmp_path / "nope.yaml")
    assert "nope.yaml: cannot read: file not found" in str(err) and "syntax error" not in str(err)


def test_utf8_bom_is_accepted(project):
    path = project()
    path.write_bytes(b"\xef\xbb\xbfgpu: off\n")
    assert config.load(path, environ={}).get("gpu") == "off"


# ------------------------------------------------------------------------------ the YAML gate


def test_recursive_alias_is_a_syntax_error(project):
    err = refusal(project("nodes:\n  head_whitelist: &a [*a]\n"))
    assert str(err) == "config.yaml:2:23: syntax error: found the alias *a inside the value it names (a recursive alias), expected a finite value"


@pytest.mark.parametrize("text", ["a: " + "[" * 100_000 + "]" * 100_000 + "\n", "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "x: 1\n"])
def test_deep_nesting_is_a_syntax_error(project, text):
    err = refusal(project(text))
    assert isinstance(err, ConfigSyntaxError) and f"found nesting deeper than {yamlpos.MAX_DEPTH} levels" in str(err)
    assert str(err).startswith("config.yaml:")


def test_nesting_through_aliases_counts_what_they_expand_to(project):
    # Each anchor nests 8 levels and refers to the one before: 5 x 8 = 40 levels once expanded.
    lines, prev = [], None
    for i in range(5):
        inner = f"*a{prev}" if prev is not None else "1"
        lines.append(f"x{i}: &a{i} " + "[" * 8 + inner + "]" * 8)
        prev = i
    assert f"deeper than {yamlpos.MAX_DEPTH} levels" in str(refusal(project("\n".join(lines) + "\n")))


def test_alias_bomb_is_refused_in_bounded_memory(project):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):  # 9**10 values if expanded
        refs = ", ".join([f"*a{i - 1}"] * 9)
        levels.append(f"a{i}: &a{i} [{refs}]")
    path = project("\n".join(levels) + "\n")
    tracemalloc.start()
    try:
        err = refusal(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"found more than {yamlpos.MAX_NODES} values (counting what aliases expand to)" in str(err)
    assert peak < 64 * 1024 * 1024


def test_too_many_aliases(project):
    text = "x: &x 1\nextra_overlays: [" + ", ".join(["*x"] * (yamlpos.MAX_ALIASES + 1)) + "]\n"
    assert f"found more than {yamlpos.MAX_ALIASES} aliases" in str(refusal(project(text)))


@pytest.mark.parametrize(
    "text, where, tag",
    [
        ("gpu: !!python/object/apply:os.system [echo hacked]\n", "1:6", "tag:yaml.org,2002:python/object/apply:os.system"),
        ("!!python/name:os.system gpu: on\n", "1:1", "tag:yaml.org,2002:python/name:os.system"),
        ("? !foo gpu\n: on\n", "1:3", "!foo"),
        ("!foo {gpu: on}: x\n", "1:1", "!foo"),
        ("gpu: !!str on\n", "1:6", "tag:yaml.org,2002:str"),
        ("gpu: ! on\n", "1:6", "!"),
    ],
)
def test_every_tag_is_a_syntax_error_with_position(project, text, where, tag):
    err = refusal(project(text))
    assert str(err) == f"config.yaml:{where}: syntax error: found the tag {tag!r}, expected plain YAML (tags are not allowed in a configuration file)"


def test_collection_as_key_is_a_syntax_error(project):
    assert str(refusal(project("? [gpu]\n: on\n"))) == "config.yaml:1:3: syntax error: found a list as a mapping key, expected a plain name"


def test_integer_beyond_pythons_digit_limit(project):
    err = refusal(project("ray:\n  cpu: {cpus: " + "9" * 5000 + "}\n"))
    assert str(err) == "config.yaml:2:15: syntax error: found a number too long to read, expected a plain value of at most 4300 digits"


def test_nul_character_in_yaml(project):
    path = project()
    path.write_text("gpu: o\x00n\n")
    assert str(refusal(path)) == "config.yaml:1:7: syntax error: found the character U+0000 (special characters are not allowed), expected printable text"


def test_dates_stay_strings(project):
    assert config.load(project("project: {name: 2024-01-01}\n"), environ={}).get("project", "name") == "2024-01-01"


# ------------------------------------------------------------------------------ schema, then rules


@pytest.mark.parametrize(
    "text, expected",
    [
        ("nodes:\n  head_whitelist: 42\n", "config.yaml:2:19: $.nodes.head_whitelist (HEAD_WHITELIST): found 42 (an integer), expected a list"),
        ("network:\n  addresses: 42\n", "config.yaml:2:14: $.network.addresses: found 42 (an integer), expected a mapping"),
        ("ray:\n  cpu:\n    hostname: [x]\n", "config.yaml:3:15: $.ray.cpu.hostname (RAY_CPU_HOSTNAME): found ['x'] (a list), expected a string"),
        ("hosts: 42\n", "config.yaml:1:8: $.hosts: found 42 (an integer), expected a list"),
        ("hosts: [{}]\n", "config.yaml:1:9: $.hosts[0]: missing key 'name'"),
        ("ray:\n  cpu:\n    ports: 7\n", "config.yaml:3:12: $.ray.cpu.ports: found 7 (an integer), expected a mapping"),
        (
            "services:\n  redis: {enabled: 1}\n",
            "config.yaml:2:20: $.services.redis.enabled (REDIS_ENABLED): found 1 (an integer), expected a boolean (true/false)",
        ),
        ("hosts: [{name: a, address: 10.0.0.1, services: 1.5}]\n", "config.yaml:1:48: $.hosts[0].services: found 1.5 (a number), expected a list"),
        ("extra_overlays: [{}]\n", "config.yaml:1:18: $.extra_overlays[0]: found {} (a mapping), expected a string"),
    ],
)
def test_rules_never_see_what_the_schema_refused(project, text, expected):
    err = refusal(project(text))
    assert isinstance(err, ConfigError)
    assert expected in [str(p) for p in err.problems]


def test_long_values_are_shortened_in_messages(project):
    err = refusal(project("project: {name: " + "X" * 100_000 + "}\n"))
    assert max(len(line) for line in str(err).splitlines()) < 300


# ------------------------------------------------------------------------------ the .env gates


def test_dotenv_fifo_is_refused(project, tmp_path):
    path = project()
    (tmp_path / ".env").unlink()
    os.mkfifo(tmp_path / ".env")
    assert ".env: cannot read: found a FIFO (named pipe), expected a regular file" in str(refusal(path))


def test_dotenv_bad_line_names_the_key_never_the_value(project, tmp_path):
    path = project()
    (tmp_path / ".env").write_text("REDIS_PASSWORD='hunter2-very-secret\nPOSTGRES_PASSWORD hunter3\n")
    err = str(refusal(path))
    assert err == ".env:1:1: syntax error: REDIS_PASSWORD: found an unterminated single quote, expected the value to end on the same line"
    (tmp_path / ".env").write_text("POSTGRES_PASSWORD hunter3\n")
    assert str(refusal(path)) == ".env:1:1: syntax error: found a line without '=' (its text is not shown: it may hold a secret), expected KEY=VALUE"
    for line in ("hunter4 is my password", "hunter5", "= hunter6", "MY-KEY=hunter7", "'hunter8'"):
        (tmp_path / ".env").write_text(f"A=1\n{line}\n")
        err = str(refusal(path))
        assert err.startswith(".env:2:1: syntax error: ") and "hunter" not in err, err


def test_dotenv_control_character_is_refused_by_key(project, tmp_path):
    path = project()
    (tmp_path / ".env").write_bytes(b"MARIMO_TOKEN=ab\x00cd\n")
    assert str(refusal(path)) == ".env:1:1: syntax error: MARIMO_TOKEN: found the control character U+0000 in the value, expected printable text"


def test_dotenv_latin1_is_refused_with_position(project, tmp_path):
    path = project()
    (tmp_path / ".env").write_bytes(b"A=1\nMARIMO_TOKEN=caf\xe9\n")
    assert str(refusal(path)) == ".env:2:17: cannot read: found byte 0xe9, which is not UTF-8; expected a UTF-8 text file"


def test_explicit_env_file_that_is_missing(project, tmp_path):
    path = project()
    assert "missing.env: cannot read: file not found" in str(refusal(path, env_path=tmp_path / "missing.env"))


def test_control_characters_written_as_yaml_escapes_are_refused(project):
    err = refusal(project('images:\n  ray: "rayproject/ray\\nEVIL=1"\n'))
    assert "config.yaml:2:8: $.images.ray (RAY_BASE_IMAGE): found the control character U+000A in the value, expected printable text on one line" in str(err)


def test_dotenv_values_are_never_shown_in_type_errors(project, tmp_path):
    from tests.conftest import SECRETS

    path = project("{}\n", env={**SECRETS, "REDIS_HOST_PORT": "hunter2", "CSLR_GPU": "hunter3"})
    err = str(refusal(path))
    assert (
        f".env:{len(SECRETS) + 1}:1: $.services.redis.port (REDIS_HOST_PORT): found the value set there (not shown: .env may hold secrets), expected an integer"
        in err
    )
    assert f".env:{len(SECRETS) + 2}:1: $.gpu (CSLR_GPU): found the value set there (not shown: .env may hold secrets), expected one of: auto, on, off" in err
    assert "hunter" not in err
