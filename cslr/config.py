"""Load the platform configuration: schema defaults < config.yaml < .env < process environment.

Every leaf of `schema/config.schema.json` that carries `x-env` can be set per machine by that
environment variable. The result is a plain nested dict plus, for every leaf, the `Location` it
came from, so that validation can point at the line that set a bad value.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

from . import yamlpos
from .errors import ConfigSyntaxError, Location, Problem

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

_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def parse_dotenv(text: str, filename: str) -> dict[str, tuple[str, Location]]:
    """Parse KEY=VALUE lines (optional `export`, quotes, `#` comments). Bad lines are errors."""
    out: dict[str, tuple[str, Location]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ENV_LINE.match(raw)
        if not match:
            raise ConfigSyntaxError(Location(filename, number, 1), f"expected KEY=VALUE, found {raw.strip()!r}")
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
            if raw.strip().split("=", 1)[1].strip()[0] == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"')
        else:
            value = re.sub(r"\s+#.*$", "", value)
        out[key] = (value, Location(filename, number, 1))
    return out


def format_dotenv(values: Mapping[str, str], header: str = "") -> str:
    """Render KEY=VALUE lines that both Compose and `parse_dotenv` read back unchanged."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    for key, value in values.items():
        text = str(value)
        if re.fullmatch(r"[A-Za-z0-9_./:,@%+*=-]*", text):
            lines.append(f"{key}={text}")
        else:
            escaped = text.replace("\\", "\\\\").replace("'", "")
            lines.append(f"{key}='{escaped}'")
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


def load(
    config_path: str | os.PathLike = "config.yaml",
    env_path: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read config.yaml, `.env` (default: beside config.yaml) and `environ` (default: os.environ).

    Raises ConfigSyntaxError for unparseable files. Type problems of environment values are
    collected in `Config.problems` for `validate` to report with everything else.
    """
    cfg_path = Path(config_path)
    environ = os.environ if environ is None else environ
    cfg_name = display_path(cfg_path)
    if not cfg_path.exists():
        raise ConfigSyntaxError(Location(cfg_name), "file not found (run `inv init` to create it)")
    yaml_data, positions = yamlpos.load(cfg_path.read_text(), cfg_name)
    if not isinstance(yaml_data, dict):
        raise ConfigSyntaxError(positions.get((), Location(cfg_name, 1, 1)), f"the top level must be a mapping, found {type(yaml_data).__name__}")

    data = _merge(defaults(), yaml_data)
    sources: dict[tuple, Location] = {}
    for path in _leaf_paths(data):
        sources[path] = positions.get(path, DEFAULT_LOCATION)

    dotenv_path = Path(env_path) if env_path is not None else cfg_path.parent / ".env"
    dotenv: dict[str, tuple[str, Location]] = {}
    if dotenv_path.exists():
        dotenv = parse_dotenv(dotenv_path.read_text(), display_path(dotenv_path))
    elif env_path is not None:
        raise ConfigSyntaxError(Location(display_path(dotenv_path)), "file not found")

    problems: list[Problem] = []
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
            problems.append(Problem(loc, f"{yamlpos.dotted(fld.path)} ({fld.env})", f"found {raw!r}, {exc}"))
            continue
        _set(data, fld.path, value)
        sources[fld.path] = loc
        if isinstance(value, list):
            for i in range(len(value)):
                sources[(*fld.path, i)] = loc

    return Config(
        data=data,
        sources=sources,
        config_path=cfg_path,
        env_path=dotenv_path if dotenv_path.exists() else None,
        yaml_positions=positions,
        yaml_data=yaml_data,
        problems=problems,
    )


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
