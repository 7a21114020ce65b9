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


# Gates of the YAML stage. The shipped config.yaml nests 4 levels and has ~100 values; these
# leave ample room while making a deep, recursive or exponentially aliased document a clear
# error instead of a RecursionError, a hang or an out-of-memory kill.
MAX_DEPTH = 32  # nested collections, counting what aliases expand to
MAX_ALIASES = 64  # `*name` references in one file
MAX_NODES = 10_000  # values after expanding every alias


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2-like plain scalars and the gates above, checked on every event
    as the composer consumes it (so the composer's own recursion never goes deeper than
    MAX_DEPTH and no tag ever reaches a constructor)."""

    def __init__(self, stream: str, filename: str = "") -> None:
        super().__init__(stream)
        self._filename = filename
        self._depth = 0
        self._aliases = 0
        self._nodes = 0
        self._open: list[list] = []  # per open collection: [anchor, nodes before, max depth inside]
        self._sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, depth it adds)

    def get_event(self):  # noqa: D102 - the composer's only way to consume an event
        event = super().get_event()
        self._gate(event)
        return event

    def _fail(self, event: yaml.Event, message: str) -> None:
        raise ConfigSyntaxError(_mark_loc(event.start_mark, self._filename), message)

    def _count(self, event: yaml.Event, values: int, depth: int) -> None:
        self._nodes += values
        if self._nodes > MAX_NODES:
            self._fail(event, f"found more than {MAX_NODES} values (counting what aliases expand to), expected a configuration file")
        if depth > MAX_DEPTH:
            self._fail(event, f"found nesting deeper than {MAX_DEPTH} levels (counting what aliases expand to), expected a configuration file")
        if self._open:
            self._open[-1][2] = max(self._open[-1][2], depth)

    def _gate(self, event: yaml.Event) -> None:
        tag = getattr(event, "tag", None)
        if tag is not None and isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
            self._fail(event, f"found the tag {tag!r}, expected plain YAML (tags are not allowed in a configuration file)")
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                self._fail(event, f"found more than {MAX_ALIASES} aliases, expected at most {MAX_ALIASES}")
            if any(entry[0] == event.anchor for entry in self._open):
                self._fail(event, f"found the alias *{event.anchor} inside the value it names (a recursive alias), expected a finite value")
            if event.anchor in self._sizes:  # an undefined alias is the composer's error
                values, adds = self._sizes[event.anchor]
                self._count(event, values, self._depth + adds)
        elif isinstance(event, yaml.ScalarEvent):
            self._count(event, 1, self._depth)
            if event.anchor is not None:
                self._sizes[event.anchor] = (1, 0)
        elif isinstance(event, yaml.CollectionStartEvent):
            self._depth += 1
            self._count(event, 1, self._depth)
            self._open.append([event.anchor, self._nodes - 1, self._depth])
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, before, deepest = self._open.pop()
            if anchor is not None:
                self._sizes[anchor] = (self._nodes - before, deepest - self._depth + 1)
            if self._open:
                self._open[-1][2] = max(self._open[-1][2], deepest)
            self._depth -= 1


# Plain scalars: null, booleans spelled true/false (so `gpu: on` stays the schema's string "on"),
# integers and floats. No timestamps (`2024-01-01` stays a string), no `<<` merge keys and no
# `=` value keys: the YAML 1.2 core schema, near enough.
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag in ("tag:yaml.org,2002:null", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:str")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    __import__("re").compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _mark_loc(mark: yaml.Mark | None, filename: str) -> Location:
    return Location(filename, mark.line + 1, mark.column + 1) if mark else Location(filename)


def _reader_loc(text: str, position: int, filename: str) -> Location:
    line = text.count("\n", 0, position) + 1
    return Location(filename, line, position - (text.rfind("\n", 0, position) + 1) + 1)


def _char(c: Any) -> str:
    code = c if isinstance(c, int) else ord(c)
    return f"U+{code:04X}"


def load(text: str, filename: str) -> tuple[Any, dict[Path, Location]]:
    """Parse `text`; return (data, positions). Every refusal raises ConfigSyntaxError."""
    loader = None
    try:
        loader = _Loader(text, filename)  # the reader checks every character here
        node = loader.get_single_node()
    except yaml.reader.ReaderError as exc:
        raise ConfigSyntaxError(
            _reader_loc(text, exc.position, filename), f"found the character {_char(exc.character)} ({exc.reason}), expected printable text"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        msg = exc.problem or str(exc)
        if exc.context:
            msg = f"{msg} ({exc.context})"
        raise ConfigSyntaxError(_mark_loc(mark, filename), msg) from None
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above is marked
        raise ConfigSyntaxError(Location(filename), str(exc)) from None
    finally:
        if loader is not None:
            loader.dispose()
    positions: dict[Path, Location] = {}
    if node is None:
        return {}, positions
    data = _convert(node, (), positions, filename, 0, _Loader(""))
    return data, positions


def _loc(node: yaml.Node, filename: str) -> Location:
    return Location(filename, node.start_mark.line + 1, node.start_mark.column + 1)


def _convert(node: yaml.Node, path: Path, positions: dict, filename: str, depth: int, scalars: _Loader) -> Any:
    if depth > MAX_DEPTH:  # the gates make this unreachable; it keeps _convert safe on its own
        raise ConfigSyntaxError(_loc(node, filename), f"found nesting deeper than {MAX_DEPTH} levels, expected a configuration file")
    positions[path] = _loc(node, filename)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
                raise ConfigSyntaxError(_loc(key_node, filename), f"found {kind} as a mapping key, expected a plain name")
            key = key_node.value
            if key in out:
                raise ConfigSyntaxError(_loc(key_node, filename), f"duplicate key {key[:80]!r}")
            positions[(*path, key, KEY)] = _loc(key_node, filename)
            out[key] = _convert(value_node, (*path, key), positions, filename, depth + 1, scalars)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(v, (*path, i), positions, filename, depth + 1, scalars) for i, v in enumerate(node.value)]
    try:
        return scalars.construct_object(node, deep=True)
    except (ValueError, OverflowError, yaml.YAMLError):  # e.g. an integer beyond Python's digit limit
        raise ConfigSyntaxError(_loc(node, filename), "found a number too long to read, expected a plain value of at most 4300 digits") from None


def dotted(path: Path) -> str:
    """`("hosts", 0, "name")` -> `$.hosts[0].name`."""
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
