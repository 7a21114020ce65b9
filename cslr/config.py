"""Load the platform configuration: schema defaults < config.yaml < .env < process environment.

Every leaf of `schema/config.schema.json` that carries `x-env` can be set per machine by that
environment variable. The result is a plain nested dict plus, for every leaf, the `Location` it
came from, so that validation can point at the line that set a bad value.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

from . import textfile, yamlpos
from .errors import ConfigSyntaxError, Location, PlatformError, Problem

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "schema" / "config.schema.json"
DEFAULT_LOCATION = Location("schema default")


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@dataclass(frozen=True)
class EnvField:
    """A schema leaf reachable through an environment variable."""

    path: tuple
    env: str
    types: tuple[str, ...]
    secret: bool
    size: bool


def env_fields(sch: dict | None = None) -> list[EnvField]:
    """Every leaf with `x-env`, in schema order."""
    out: list[EnvField] = []

    def walk(node: dict, path: tuple) -> None:
        if "x-env" in node:
            t = node.get("type", "string")
            types = tuple(t) if isinstance(t, list) else (t,)
            out.append(EnvField(path, node["x-env"], types, bool(node.get("x-secret")), bool(node.get("x-size"))))
        for key, sub in node.get("properties", {}).items():
            walk(sub, (*path, key))

    walk(sch or schema(), ())
    return out


def defaults(sch: dict | None = None) -> dict:
    """The schema's defaults as a nested dict (objects always present, leaves with defaults)."""

    def build(node: dict) -> Any:
        if node.get("type") == "object" and "properties" in node:
            out = {}
            for key, sub in node["properties"].items():
                value = build(sub)
                if value is not _MISSING:
                    out[key] = value
            return out
        return json.loads(json.dumps(node["default"])) if "default" in node else _MISSING

    return build(sch or schema())


_MISSING = object()

# ---------------------------------------------------------------------------------------------
# .env files
#
# The dialect is Docker Compose's env-file format, restricted to one line per entry: `KEY=VALUE`
# with optional `export `; unquoted values end at ` #`; single quotes are literal except that
# \' is a quote; double quotes take Compose's escapes (\\ \" \$ $$ \n \t \r \a \b \f \v; other
# backslashes stay).
# `${VAR}` is not expanded. Errors name the key and the line, never the value (it may be a secret).

_ENV_KEY = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")
_ESCAPES = {"\\": "\\", '"': '"', "$": "$", "n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_UNQUOTED_SAFE = re.compile(r"[A-Za-z0-9_./:,@%+*=-]*")


def _single_quoted(body: str) -> tuple[str, str] | None:
    """Decode a single-quoted value as Compose does: literal, except that a quote after an odd
    number of backslashes is part of the value (and loses that one backslash)."""
    out, run = [], 0
    for i, ch in enumerate(body):
        if ch == "'":
            if run % 2 == 0:
                return "".join(out), body[i + 1 :]
            out[-1] = "'"
            run = 0
            continue
        run = run + 1 if ch == "\\" else 0
        out.append(ch)
    return None


def _double_quoted(body: str) -> tuple[str, str] | None:
    """Decode a double-quoted value (without its opening quote); return (value, rest) or None."""
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == '"':
            return "".join(out), body[i + 1 :]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        if ch == "$" and body[i + 1 : i + 2] == "$":
            out.append("$")
            i += 2
            continue
        out.append(ch)
        i += 1
    return None


def parse_dotenv(text: str, filename: str) -> dict[str, tuple[str, Location]]:
    """Parse an env file; every malformed line is a ConfigSyntaxError naming its key and line."""
    out: dict[str, tuple[str, Location]] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw[:-1] if raw.endswith("\r") else raw
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = Location(filename, number, 1)
        match = _ENV_KEY.match(raw)
        if not match:  # nothing of the line is echoed: it may be a pasted secret
            what = "a line without '='" if "=" not in raw else "a line whose text before '=' is not a variable name"
            raise ConfigSyntaxError(where, f"found {what} (its text is not shown: it may hold a secret), expected KEY=VALUE")
        key, rest = match.group(1), match.group(2).lstrip()
        control = next((c for c in rest if unicodedata.category(c) == "Cc" and c != "\t"), None)
        if control is not None:
            raise ConfigSyntaxError(where, f"{key}: found the control character U+{ord(control):04X} in the value, expected printable text")
        if rest.startswith("'"):
            decoded = _single_quoted(rest[1:])
            if decoded is None:
                raise ConfigSyntaxError(where, f"{key}: found an unterminated single quote, expected the value to end on the same line")
            value, after = decoded
        elif rest.startswith('"'):
            decoded = _double_quoted(rest[1:])
            if decoded is None:
                raise ConfigSyntaxError(where, f"{key}: found an unterminated double quote, expected the value to end on the same line")
            value, after = decoded
        else:
            value, after = re.sub(r"(^|\s+)#.*$", "", rest).strip(), ""
        after = after.strip()
        if after and not after.startswith("#"):
            raise ConfigSyntaxError(where, f"{key}: found text after the closing quote, expected nothing or a # comment")
        out[key] = (value, Location(filename, number, 1))
    return out


class DotenvValueError(PlatformError):
    """A value that no env-file line can carry unchanged (a newline, NUL, other control bytes)."""

    exit_code = 2


def format_dotenv_value(key: str, value: object) -> str:
    """One `KEY=VALUE` line that `parse_dotenv` and Compose both read back as exactly `value`."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise DotenvValueError(f"cannot write {key[:60]!r} to an env file: expected a variable name (letters, digits, _)")
    text = str(value)
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cs") and c != "\t"), None)
    if bad is not None:
        raise DotenvValueError(
            f"cannot write {key} to an env file: its value contains U+{ord(bad):04X} ({unicodedata.name(bad, 'a control character')}); "
            "expected a single line of printable text"
        )
    if _UNQUOTED_SAFE.fullmatch(text):
        return f"{key}={text}"
    if "'" not in text and "\\" not in text:
        return f"{key}='{text}'"  # literal in Compose: no interpolation, and no backslash to escape
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'{key}="{escaped}"'


def format_dotenv(values: Mapping[str, object], header: str = "") -> str:
    """Render KEY=VALUE lines that both Compose and `parse_dotenv` read back unchanged.

    A value no line can carry (see `format_dotenv_value`) raises DotenvValueError; nothing is
    returned, so nothing is half-written."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    lines += [format_dotenv_value(key, value) for key, value in values.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Converting environment strings to schema types

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def convert_env_value(raw: str, fld: EnvField) -> Any:
    """Turn an environment string into the schema type of `fld`; ValueError says what was expected."""
    types = fld.types
    if raw == "" and "null" in types:
        return None
    if "array" in types:
        return [item.strip() for item in raw.split(",") if item.strip()]
    if "boolean" in types:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        if "string" in types:
            return raw.strip()  # a boolean-or-word setting (`auto`): the schema's enum judges it
        raise ValueError("expected a boolean (true/false, 1/0, yes/no)")
    if "integer" in types:
        try:
            return int(raw.strip())
        except ValueError:
            if "string" in types:
                return raw
            raise ValueError("expected an integer") from None
    return raw


# ---------------------------------------------------------------------------------------------
# The loaded configuration


@dataclass
class Config:
    """Merged configuration and provenance."""

    data: dict
    sources: dict[tuple, Location]
    config_path: Path
    env_path: Path | None
    yaml_positions: dict[tuple, Location] = field(default_factory=dict)
    yaml_data: dict = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # `.env` entries and the environment variables that custom services name as `${NAME}`
    # (services.custom.*.environment): name -> (value, where it was set). Never printed.
    variables: dict[str, tuple[str, Location]] = field(default_factory=dict)

    def get(self, *path: Any, default: Any = None) -> Any:
        node: Any = self.data
        for part in path:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                return default
        return node

    def gcs_fault_tolerance(self) -> bool:
        """Whether Ray's GCS keeps its state in the stack's Redis: `ray.gcs_fault_tolerance`, whose
        `auto` (the default) means "whenever Redis runs" - the one place that resolves it."""
        value = self.get("ray", "gcs_fault_tolerance")
        if value == "auto":
            return bool(self.get("services", "redis", "enabled"))
        return value is True

    def location(self, path: tuple) -> Location:
        """Best location for `path`: its own source, else the nearest ancestor's."""
        probe = tuple(path)
        while probe:
            if probe in self.sources:
                return self.sources[probe]
            if probe in self.yaml_positions:
                return self.yaml_positions[probe]
            probe = probe[:-1]
        return self.yaml_positions.get((), Location(self.config_path.name))

    def key_location(self, path: tuple) -> Location:
        return self.yaml_positions.get((*path, yamlpos.KEY)) or self.location(path)

    def display_name(self, path: tuple) -> str:
        fld = next((f for f in env_fields() if f.path == tuple(path)), None)
        suffix = f" ({fld.env})" if fld else ""
        return yamlpos.dotted(path) + suffix


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base.get(key), value) if key in base else value
        return out
    return over


def _leaf_paths(data: Any, path: tuple = ()) -> Iterator[tuple]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaf_paths(value, (*path, key))
    elif isinstance(data, list):
        yield path
        for i, value in enumerate(data):
            yield from _leaf_paths(value, (*path, i))
    else:
        yield path


def _set(data: dict, path: tuple, value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return
    node[path[-1]] = value


def display_path(path: Path, root: Path | None = None) -> str:
    """A file name as the user would type it: relative to the working directory if inside it."""
    try:
        return str(path.resolve().relative_to((root or Path.cwd()).resolve()))
    except ValueError:
        return str(path)


DEFAULT_CONFIG = "config.yaml"


def locate(config_path: str | os.PathLike = DEFAULT_CONFIG, cwd: Path | None = None) -> Path:
    """The config file to read. The default name is looked up in the working directory, then
    in the project's checkout (where tasks.py lives); a path given explicitly is taken as is.
    A file in neither place is a ConfigFileError that lists every place looked at."""
    given = Path(config_path)
    if str(config_path) != DEFAULT_CONFIG:
        return given
    here = (cwd or Path.cwd()) / DEFAULT_CONFIG
    candidates = list(dict.fromkeys([here, ROOT / DEFAULT_CONFIG]))
    for candidate in candidates:
        if os.path.lexists(candidate):
            return candidate if candidate == here else candidate.resolve()
    looked = " and ".join(str(c) for c in candidates)
    from .errors import ConfigFileError

    raise ConfigFileError(Location(DEFAULT_CONFIG), f"file not found; looked for {looked}; run `inv init` to create it, or pass --config PATH")


def load(
    config_path: str | os.PathLike = DEFAULT_CONFIG,
    env_path: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read config.yaml, `.env` (default: beside config.yaml) and `environ` (default: os.environ).

    The gates, in order: each file is a regular UTF-8 file under the size cap (textfile), the
    YAML is plain data within the depth and alias limits (yamlpos), the top level is a mapping,
    no removed setting is used, and every environment value converts to its schema type. A
    refused file raises ConfigSyntaxError (exit 2, file:line:col); problems with values are
    collected in `Config.problems` for `validate` to report with the schema's findings.
    """
    cfg_path = locate(config_path)
    environ = os.environ if environ is None else environ
    cfg_name = display_path(cfg_path)
    text = textfile.read_text(cfg_path, cfg_name, missing_hint="; run `inv init` to create it, or pass --config PATH")
    yaml_data, positions = yamlpos.load(text, cfg_name)
    if not isinstance(yaml_data, dict):
        raise ConfigSyntaxError(positions.get((), Location(cfg_name, 1, 1)), f"found {_kind(yaml_data)} at the top level, expected a mapping")

    problems: list[Problem] = list(removed_in_yaml(yaml_data, positions, cfg_name))  # and drops them
    data = _merge(defaults(), yaml_data)
    sources: dict[tuple, Location] = {}
    for path in _leaf_paths(data):
        sources[path] = positions.get(path, DEFAULT_LOCATION)

    dotenv_path = Path(env_path) if env_path is not None else cfg_path.parent / ".env"
    dotenv: dict[str, tuple[str, Location]] = {}
    read_env = env_path is not None or os.path.lexists(dotenv_path)
    if read_env:
        dotenv_name = display_path(dotenv_path)
        dotenv = parse_dotenv(textfile.read_text(dotenv_path, dotenv_name), dotenv_name)

    problems += removed_in_env(dotenv, environ)
    for fld in env_fields():
        raw: str | None = None
        loc: Location | None = None
        if fld.env in environ:
            raw, loc = environ[fld.env], Location(f"environment ${fld.env}")
        elif fld.env in dotenv:
            raw, loc = dotenv[fld.env]
        if raw is None or loc is None:
            continue
        try:
            value = convert_env_value(raw, fld)
        except ValueError as exc:
            from_file = not loc.file.startswith("environment")
            shown = "a value (secret, not shown)" if fld.secret else ("the value set there (not shown: .env may hold secrets)" if from_file else shorten(raw))
            problems.append(Problem(loc, f"{yamlpos.dotted(fld.path)} ({fld.env})", f"found {shown}, {exc}"))
            continue
        _set(data, fld.path, value)
        sources[fld.path] = loc
        if isinstance(value, list):
            for i in range(len(value)):
                sources[(*fld.path, i)] = loc

    variables = dict(dotenv)
    for name in referenced_variables(data):
        if name in environ:
            variables[name] = (environ[name], Location(f"environment ${name}"))
    return Config(
        data=data,
        sources=sources,
        config_path=cfg_path,
        env_path=dotenv_path if read_env else None,
        yaml_positions=positions,
        yaml_data=yaml_data,
        problems=problems,
        variables=variables,
    )


# `${NAME}` in a custom service's environment value names a variable of `.env` or the
# environment; `$$` is a literal dollar; any other `$` is refused by validation.
REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$")


def split_references(text: str) -> list[tuple[str, str]]:
    """A value as (kind, text) parts: ("literal", text), ("ref", NAME) or ("bad", "$...")."""
    parts: list[tuple[str, str]] = []
    pos = 0
    for match in REFERENCE.finditer(text):
        if match.start() > pos:
            parts.append(("literal", text[pos : match.start()]))
        if match.group(0) == "$$":
            parts.append(("literal", "$"))
        elif match.group(1):
            parts.append(("ref", match.group(1)))
        else:
            parts.append(("bad", text[match.start() : match.start() + 12]))
        pos = match.end()
    if pos < len(text):
        parts.append(("literal", text[pos:]))
    return parts


def referenced_variables(data: dict) -> list[str]:
    """Every NAME a custom service's environment names as `${NAME}`."""
    names: list[str] = []
    custom = ((data.get("services") or {}) if isinstance(data.get("services"), dict) else {}).get("custom")
    for svc in (custom or {}).values() if isinstance(custom, dict) else ():
        env = svc.get("environment") if isinstance(svc, dict) else None
        for value in (env or {}).values() if isinstance(env, dict) else ():
            if isinstance(value, str):
                names += [name for kind, name in split_references(value) if kind == "ref" and name not in names]
    return names


def shorten(value: Any, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: messages stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "…" + text[-4:]


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "an integer", float: "a number", bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------
# Removed settings: each names the one setting that replaced it (as the legacy nodes.yaml does).

# path -> (old environment name, what to use instead). Inside a bridge-networked Ray container
# the ports are fixed (topology.RAY_CONTAINER_PORTS); the settings are the per-node ports.
REMOVED: dict[tuple, tuple[str, str]] = {
    ("ray", "head_port"): (
        "RAY_HEAD_PORT",
        "set each node's GCS port with ray.cpu.ports.gcs (RAY_CPU_GCS_HOST_PORT) and "
        "ray.gpu.ports.gcs (RAY_GPU_GCS_HOST_PORT); inside a container it is always 6379",
    ),
    ("ray", "dashboard_port"): (
        "RAY_DASHBOARD_PORT",
        "set each node's dashboard port with ray.cpu.ports.dashboard (RAY_CPU_DASHBOARD_HOST_PORT) and "
        "ray.gpu.ports.dashboard (RAY_GPU_DASHBOARD_HOST_PORT); inside a container it is always 8265",
    ),
    ("ray", "client_port"): (
        "RAY_CLIENT_SERVER_PORT",
        "clients reach the head through services.health.ray_client_port (RAY_CLIENT_HOST_PORT); "
        "in a multi-host cluster each node's client server port is ray.cpu.ports.client / ray.gpu.ports.client; "
        "inside a container it is always 10001",
    ),
}


def removed_in_yaml(data: dict, positions: dict, filename: str) -> Iterator[Problem]:
    """A migration error for every removed key in `data`, which loses those keys (so that the
    schema does not call them unknown as well)."""
    for path, (_env, advice) in REMOVED.items():
        parent: Any = data
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent:
            del parent[path[-1]]
            loc = positions.get((*path, yamlpos.KEY)) or positions.get(path) or Location(filename)
            yield Problem(loc, yamlpos.dotted(path), f"found a removed setting; {advice}")


def removed_in_env(dotenv: Mapping[str, tuple[str, Location]], environ: Mapping[str, str]) -> Iterator[Problem]:
    """In .env (the project's file) a removed name is an error; in the process environment,
    where other programs may use the same name (Ray's own containers set RAY_HEAD_PORT), it is
    ignored with a warning."""
    for path, (env, advice) in REMOVED.items():
        if env in dotenv:
            yield Problem(dotenv[env][1], f"{yamlpos.dotted(path)} ({env})", f"found a removed setting; {advice}")
        elif env in environ:
            yield Problem(Location(f"environment ${env}"), f"{yamlpos.dotted(path)} ({env})", f"is no longer a setting and is ignored; {advice}", "warning")


# ---------------------------------------------------------------------------------------------
# Sizes

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([bkmgt]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str | int) -> int:
    """`512m` -> 536870912; `1.5g` -> 1610612736. ValueError on anything else."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"not a size: {text!r}")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower()])
