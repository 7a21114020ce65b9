"""What `inv logs` prints: the services' logs in one time order (pure parsing and sorting).

`docker compose logs --timestamps` prints `SERVICE  | 2026-12-06T00:18:01.123456789Z message`,
service by service; `merge` orders those lines by their timestamp across services (a line
without one - a continuation - stays after the line before it). Following (`--follow`) is
Compose's own: lines arrive in time order already.
"""

from __future__ import annotations

import re

from .errors import UsageError

_LINE = re.compile(r"^(?P<prefix>[^|]*\|\s?)(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))\s?(?P<rest>.*)$")
_SINCE = re.compile(r"^(\d{1,6}(\.\d+)?(ns|us|ms|s|m|h))+$|^\d{4}-\d\d-\d\d(T\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:\d\d)?)?$")


def check_since(value: str) -> str:
    """`--since` as Compose takes it: a duration (`10m`, `1h30m`) or a date/time (`2026-12-06T00:00:00Z`)."""
    value = value.strip()
    if not _SINCE.match(value):
        raise UsageError(f"--since {value!r}: expected a duration such as 10m or 2h, or a time such as 2026-12-06T09:00:00Z")
    return value


def _key(ts: str) -> str:
    """A sortable form of an RFC 3339 UTC timestamp (fractions padded to nanoseconds)."""
    main, _, frac = ts.rstrip("Z").partition(".")
    return main + "." + (frac + "000000000")[:9]


def merge(text: str) -> list[str]:
    """The lines of `compose logs --timestamps` of several services, in time order (stable)."""
    keyed: list[tuple[str, int, str]] = []
    last = ""
    for i, line in enumerate(text.splitlines()):
        m = _LINE.match(line)
        if m and m.group("ts").endswith("Z"):
            last = _key(m.group("ts"))
        keyed.append((last, i, line))
    return [line for _, _, line in sorted(keyed)]
