"""What `inv config` shows: the effective value of every setting and where it came from.

Origins, lowest precedence first: `schema default`, `config.yaml:LINE`, `.env:LINE`,
`environment $NAME`. Secret values are never shown, only whether they are set. Pure: reads a
loaded `Config`, returns rows and text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from . import yamlpos
from .config import Config, env_fields, shorten


@dataclass(frozen=True)
class Row:
    setting: str  # `$.ray.cpu.ports.gcs (RAY_CPU_GCS_HOST_PORT)`
    value: str
    origin: str


def _value_text(value: Any, secret: bool) -> str:
    if secret:
        return "null" if value in (None, "") else "****** (set, not shown)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_value_text(v, False) for v in value) + "]"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    return text if len(text) <= 60 and text.isprintable() else shorten(text)


def _origin(cfg: Config, path: tuple) -> str:
    loc = cfg.sources.get(path) or cfg.location(path)
    return f"{loc.file}:{loc.line}" if loc.line is not None else loc.file


def _settings(data: Any, path: tuple = ()) -> Iterator[tuple]:
    """Paths of every setting: scalars and lists of scalars are one setting each."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _settings(value, (*path, key))
    elif isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        for i, value in enumerate(data):
            yield from _settings(value, (*path, i))
    else:
        yield path


def rows(cfg: Config) -> list[Row]:
    fields = {f.path: f for f in env_fields()}
    out = []
    for path in _settings(cfg.data):
        fld = fields.get(path)
        name = yamlpos.dotted(path) + (f" ({fld.env})" if fld else "")
        out.append(Row(name, _value_text(cfg.get(*path), bool(fld and fld.secret)), _origin(cfg, path)))
    return out


def table(items: list[Row]) -> str:
    header = Row("SETTING", "VALUE", "ORIGIN")
    w1 = max(len(r.setting) for r in [header, *items])
    w2 = max(len(r.value) for r in [header, *items])
    return "\n".join(f"{r.setting:<{w1}}  {r.value:<{w2}}  {r.origin}".rstrip() for r in [header, *items])
