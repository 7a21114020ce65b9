"""Load YAML into plain Python data and remember where every value stands in the file.

Positions are keyed by path tuples (`("network", "subnet")`, `("hosts", 0, "name")`): the
value's own position, and under `(*path, "<key>")` the position of a mapping key, so that an
unknown key can be pointed at precisely.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigSyntaxError, Location

Path = tuple
KEY = "<key>"


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps YAML 1.1 booleans out of plain words like `on`/`off`."""


# `gpu: on` must stay the string "on" (the schema's enum), not True: YAML 1.2 semantics.
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    __import__("re").compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load(text: str, filename: str) -> tuple[Any, dict[Path, Location]]:
    """Parse `text`; return (data, positions). Syntax errors raise ConfigSyntaxError."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        msg = exc.problem or str(exc)
        if exc.context:
            msg = f"{msg} ({exc.context})"
        raise ConfigSyntaxError(Location(filename, line, col), msg) from None
    except yaml.YAMLError as exc:  # pragma: no cover - non-marked errors are rare
        raise ConfigSyntaxError(Location(filename), str(exc)) from None
    positions: dict[Path, Location] = {}
    if node is None:
        return {}, positions
    data = _convert(node, (), positions, filename)
    return data, positions


def _loc(node: yaml.Node, filename: str) -> Location:
    return Location(filename, node.start_mark.line + 1, node.start_mark.column + 1)


def _convert(node: yaml.Node, path: Path, positions: dict, filename: str) -> Any:
    positions[path] = _loc(node, filename)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = _Loader.construct_object(_Loader(""), key_node) if not isinstance(key_node, yaml.ScalarNode) else key_node.value
            if not isinstance(key, str):
                raise ConfigSyntaxError(_loc(key_node, filename), f"mapping keys must be strings, found {key!r}")
            if key in out:
                raise ConfigSyntaxError(_loc(key_node, filename), f"duplicate key {key!r}")
            positions[(*path, key, KEY)] = _loc(key_node, filename)
            out[key] = _convert(value_node, (*path, key), positions, filename)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(v, (*path, i), positions, filename) for i, v in enumerate(node.value)]
    loader = _Loader("")
    return loader.construct_object(node, deep=True)


def dotted(path: Path) -> str:
    """`("hosts", 0, "name")` -> `$.hosts[0].name`."""
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
