"""Loading and precedence: schema defaults < config.yaml < .env < process environment."""

from __future__ import annotations

import pytest

from cslr import config
from cslr.errors import ConfigSyntaxError


def test_schema_defaults_fill_an_empty_config(project):
    cfg = config.load(project("{}\n"), environ={})
    assert cfg.get("network", "subnet") == "172.28.0.0/16"
    assert cfg.get("ray", "cpu", "ports", "gcs") == 6379
    assert cfg.get("nodes", "head_whitelist") == ["ray-cpu", "ray-gpu"]
    assert str(cfg.location(("ray", "cpu", "ports", "gcs"))) == "schema default"


def test_config_yaml_beats_defaults_and_records_its_line(project):
    cfg = config.load(project("ray:\n  cpu:\n    ports: {gcs: 7000}\n"), environ={})
    assert cfg.get("ray", "cpu", "ports", "gcs") == 7000
    assert str(cfg.location(("ray", "cpu", "ports", "gcs"))) == "config.yaml:3:18"


def test_dotenv_beats_config_yaml(project, tmp_path):
    path = project("ray:\n  cpu:\n    ports: {gcs: 7000}\n", env={"RAY_CPU_GCS_HOST_PORT": "7100"})
    cfg = config.load(path, environ={})
    assert cfg.get("ray", "cpu", "ports", "gcs") == 7100
    assert str(cfg.location(("ray", "cpu", "ports", "gcs"))) == ".env:1:1"


def test_environment_beats_dotenv(project):
    path = project("ray:\n  cpu:\n    ports: {gcs: 7000}\n", env={"RAY_CPU_GCS_HOST_PORT": "7100"})
    cfg = config.load(path, environ={"RAY_CPU_GCS_HOST_PORT": "7200"})
    assert cfg.get("ray", "cpu", "ports", "gcs") == 7200
    assert "environment $RAY_CPU_GCS_HOST_PORT" in str(cfg.location(("ray", "cpu", "ports", "gcs")))


def test_env_file_flag_replaces_the_default_dotenv(project, tmp_path):
    path = project("{}\n", env={"CSLR_GPU": "on"})
    other = tmp_path / "other.env"
    other.write_text("CSLR_GPU=off\n")
    assert config.load(path, env_path=other, environ={}).get("gpu") == "off"


@pytest.mark.parametrize(
    "env,path,expected",
    [
        ({"HEAD_WHITELIST": "a, b ,c"}, ("nodes", "head_whitelist"), ["a", "b", "c"]),
        ({"RAY_GCS_FT": "yes"}, ("ray", "gcs_fault_tolerance"), True),
        ({"REDIS_ENABLED": "0"}, ("services", "redis", "enabled"), False),
        ({"RAY_CPU_NUM_CPUS": ""}, ("ray", "cpu", "cpus"), None),
        ({"RAY_GPU_COUNT": "2"}, ("ray", "gpu", "gpus"), 2),
        ({"RAY_GPU_COUNT": "all"}, ("ray", "gpu", "gpus"), "all"),
        ({"HEAD_ADDRESS": "10.0.0.5:6379"}, ("nodes", "head_address"), "10.0.0.5:6379"),
    ],
)
def test_environment_strings_take_the_schema_type(project, env, path, expected):
    assert config.load(project("{}\n"), environ=env).get(*path) == expected


def test_bad_environment_value_is_a_problem_with_its_origin(project):
    cfg = config.load(project("{}\n"), environ={"RAY_CPU_GCS_HOST_PORT": "sixty"})
    assert len(cfg.problems) == 1
    assert str(cfg.problems[0]) == "environment $RAY_CPU_GCS_HOST_PORT: $.ray.cpu.ports.gcs (RAY_CPU_GCS_HOST_PORT): found 'sixty', expected an integer"


def test_yaml_syntax_error_has_line_and_column(project):
    with pytest.raises(ConfigSyntaxError) as info:
        config.load(project("ray:\n  version: [1,\n"), environ={})
    assert str(info.value).startswith("config.yaml:3:1: syntax error:")
    assert info.value.exit_code == 2


def test_duplicate_yaml_key_is_a_syntax_error(project):
    with pytest.raises(ConfigSyntaxError, match=r"config.yaml:2:1: .*duplicate key 'gpu'"):
        config.load(project("gpu: on\ngpu: off\n"), environ={})


def test_gpu_on_stays_a_string_not_a_yaml11_boolean(project):
    assert config.load(project("gpu: on\n"), environ={}).get("gpu") == "on"


def test_top_level_must_be_a_mapping(project):
    with pytest.raises(ConfigSyntaxError, match=r"config.yaml:1:1: syntax error: found a list at the top level, expected a mapping"):
        config.load(project("- a\n- b\n"), environ={})


def test_dotenv_parsing_quotes_comments_export():
    parsed = config.parse_dotenv('# c\nexport A=1\nB=\'x y\'\nC="q\\""\nD=v # note\n\n', ".env")
    assert {k: v for k, (v, _) in parsed.items()} == {"A": "1", "B": "x y", "C": 'q"', "D": "v"}
    assert str(parsed["B"][1]) == ".env:3:1"


def test_dotenv_bad_line_is_a_syntax_error():
    with pytest.raises(ConfigSyntaxError, match=r"\.env:2:1: .*expected KEY=VALUE"):
        config.parse_dotenv("A=1\nnot a pair\n", ".env")


def test_format_dotenv_round_trips():
    values = {"A": "plain", "B": "with space", "C": "", "D": "a,b:c/d"}
    parsed = config.parse_dotenv(config.format_dotenv(values, "hdr"), "x")
    assert {k: v for k, (v, _) in parsed.items()} == values


@pytest.mark.parametrize("text,expected", [("512m", 512 * 1024**2), ("16g", 16 * 1024**3), ("1.5g", int(1.5 * 1024**3)), ("100", 100), ("2G", 2 * 1024**3)])
def test_parse_size(text, expected):
    assert config.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "g", "12x", "1.2.3g", "-1g"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        config.parse_size(text)


def test_every_env_name_is_unique_and_documented():
    fields = config.env_fields()
    names = [f.env for f in fields]
    assert len(names) == len(set(names))

    def walk(node, path):
        if path:
            assert node.get("description"), f"{path} has no description"
        for key, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{key}")
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(config.schema(), "$")


def test_default_config_is_found_in_the_project_when_not_in_the_working_directory(tmp_path, monkeypatch):
    project_dir = tmp_path / "checkout"
    project_dir.mkdir()
    (project_dir / "config.yaml").write_text("gpu: off\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(config, "ROOT", project_dir)  # the checkout that holds tasks.py
    assert config.locate("config.yaml") == project_dir / "config.yaml"
    assert config.load("config.yaml", environ={}).get("gpu") == "off"
    (elsewhere / "config.yaml").write_text("gpu: on\n")
    assert config.load("config.yaml", environ={}).get("gpu") == "on"  # the working directory's wins


def test_missing_config_says_exactly_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "ROOT", tmp_path / "checkout")
    with pytest.raises(ConfigSyntaxError) as info:
        config.load("config.yaml", environ={})
    assert str(info.value) == (
        f"config.yaml: cannot read: file not found; looked for {tmp_path}/config.yaml and {tmp_path}/checkout/config.yaml; "
        "run `inv init` to create it, or pass --config PATH"
    )
    assert info.value.exit_code == 2


def test_explicit_config_path_is_not_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigSyntaxError, match=r"^sub/config.yaml: cannot read: file not found"):
        config.load("sub/config.yaml", environ={})


def test_missing_secrets_name_the_env_file_where_it_was_expected(tmp_path, monkeypatch):
    from cslr import validate
    from cslr.errors import ConfigError

    project_dir = tmp_path / "checkout"
    project_dir.mkdir()
    (project_dir / "config.yaml").write_text("{}\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr(config, "ROOT", project_dir)
    with pytest.raises(ConfigError) as info:
        validate.validate(config.load("config.yaml", environ={}))
    assert f"{project_dir}/.env: $.secrets.redis_password (REDIS_PASSWORD): found no REDIS_PASSWORD" in str(info.value)
