"""What `inv config` shows: the effective value of every setting and where it came from.

Origins, lowest precedence first: `schema default`, `config.yaml:LINE`, `.env:LINE`,
`environment $NAME`. Secret values are never shown, only whether they are set. A value that
validation refused is marked with what was expected, an unknown key as such. Pure: reads a
loaded `Config` and validation's problems, returns rows, text and JSON-ready dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from . import yamlpos
from .config import Config, env_fields, shorten
from .errors import Problem


@dataclass(frozen=True)
class Row:
    setting: str  # `$.ray.cpu.ports.gcs (RAY_CPU_GCS_HOST_PORT)`
    value: str
    origin: str
    note: str = ""  # "invalid: …" / "unknown key" from validation; "" when the value is fine


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


def _note(dotted_path: str, problems: Iterable[Problem]) -> str:
    """What validation said about this very setting (or a setting under it), if anything."""
    notes = []
    for p in problems:
        where = p.path.split(" (", 1)[0]
        if where == dotted_path or where.startswith(dotted_path + ".") or where.startswith(dotted_path + "["):
            text = p.message
            if text.startswith("unknown key"):
                notes.append("unknown key (ignored)" if p.severity != "error" else "unknown key")
            else:
                notes.append(("invalid: " if p.severity == "error" else f"{p.severity}: ") + text)
    return "; ".join(dict.fromkeys(notes))


def rows(cfg: Config, problems: Iterable[Problem] = ()) -> list[Row]:
    """Every setting with its effective value, origin and, from `problems`, what is wrong with it."""
    fields = {f.path: f for f in env_fields()}
    problems = list(problems)
    out = []
    for path in _settings(cfg.data):
        fld = fields.get(path)
        dotted = yamlpos.dotted(path)
        name = dotted + (f" ({fld.env})" if fld else "")
        out.append(Row(name, _value_text(cfg.get(*path), bool(fld and fld.secret)), _origin(cfg, path), _note(dotted, problems)))
    return out


def table(items: list[Row]) -> str:
    header = Row("SETTING", "VALUE", "ORIGIN", "PROBLEM")
    noted = any(r.note for r in items)
    w1 = max(len(r.setting) for r in [header, *items])
    w2 = max(len(r.value) for r in [header, *items])
    w3 = max(len(r.origin) for r in [header, *items])
    return "\n".join(f"{r.setting:<{w1}}  {r.value:<{w2}}  {r.origin:<{w3}}  {r.note if noted else ''}".rstrip() for r in [header, *items])


def as_json(items: list[Row]) -> list[dict]:
    return [{"setting": r.setting, "value": r.value, "origin": r.origin, "problem": r.note or None} for r in items]
