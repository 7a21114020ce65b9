"""Error types shared by the package; `tasks.py` turns them into `invoke.Exit`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where a value came from: a file position, the process environment, or a schema default."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        if self.column is None:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One finding: `location: $.dotted.path: message`."""

    location: Location
    path: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        prefix = "" if self.severity == "error" else f"{self.severity}: "
        return f"{self.location}: {self.path}: {prefix}{self.message}"


class PlatformError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigSyntaxError(PlatformError):
    """The YAML (or .env) could not be parsed at all: reported apart from validation errors."""

    exit_code = 2
    kind = "syntax error"

    def __init__(self, location: Location, message: str):
        super().__init__(f"{location}: {self.kind}: {message}")
        self.location = location
        self.message = message


class ConfigFileError(ConfigSyntaxError):
    """The file itself was refused before parsing: missing, not a regular file, too large, not UTF-8."""

    kind = "cannot read"


class UsageError(PlatformError):
    """The user asked for something the configuration does not have (e.g. `--host` of no host)."""

    exit_code = 2


class ConfigError(PlatformError):
    """Validation found problems; carries every one of them, in file order."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        lines = [str(p) for p in problems]
        lines.append(f"{len(errors)} error(s) in the configuration; nothing was written.")
        super().__init__("\n".join(lines))


class ComposeError(PlatformError):
    """Docker Compose itself refused the project or a command failed."""

    exit_code = 1
