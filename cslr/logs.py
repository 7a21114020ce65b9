"""What `inv logs` prints: the services' logs in one time order (pure parsing and sorting).

`docker compose logs --timestamps` prints `SERVICE  | 2026-12-06T00:18:01.123456789Z message`,
service by service; `merge` orders those lines by their timestamp across services (a line
without one - a continuation - stays after the line before it). Following (`--follow`), Compose
prints each service's lines as they arrive, and services' clocks and buffers differ a little:
`FollowOrder` holds each line for a short window and lets them out in timestamp order, so lines
that arrive within the window of each other are in time order (`follow` runs it).
"""

from __future__ import annotations

import heapq
import queue
import re
import subprocess
import sys
import threading
import time
from typing import Callable, Mapping, Sequence, TextIO

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


class FollowOrder:
    """Followed lines in time order within a window: ``push(line, now)`` holds a line; ``release(now)``
    returns, in timestamp order, every held line that is at least ``window`` s old and every held
    line stamped no later than those (they happened before, so they go first). A line without a
    timestamp (a continuation) takes its service's last one. Pure: ``now`` comes from the caller."""

    def __init__(self, window: float = 0.5) -> None:
        self.window = window
        self._held: list[tuple[str, int, float, str]] = []  # heap of (key, seq, arrival, line)
        self._seq = 0
        self._last_key: dict[str, str] = {}  # service prefix -> its last timestamp key
        self._floor = ""  # the key of the last line let out

    def push(self, line: str, now: float) -> None:
        m = _LINE.match(line)
        prefix = line.split("|", 1)[0] if "|" in line else ""
        if m and m.group("ts").endswith("Z"):
            key = _key(m.group("ts"))
            self._last_key[prefix] = key
        else:
            key = self._last_key.get(prefix, self._floor)
        heapq.heappush(self._held, (max(key, self._floor), self._seq, now, line))
        self._seq += 1

    def release(self, now: float) -> list[str]:
        expired = [key for key, _, arrival, _ in self._held if now - arrival >= self.window]
        if not expired:
            return []
        upto, out = max(expired), []
        while self._held and self._held[0][0] <= upto:
            key, _, _, line = heapq.heappop(self._held)
            self._floor = max(self._floor, key)
            out.append(line)
        return out

    def flush(self) -> list[str]:
        out = [line for _, _, _, line in sorted(self._held)]
        self._held = []
        return out


def follow(command: Sequence[str], env: Mapping[str, str], out: TextIO = sys.stdout, window: float = 0.5, clock: Callable[[], float] = time.monotonic) -> int:
    """Run ``compose logs --follow --timestamps ...`` and print its lines through FollowOrder."""
    proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, text=True, env=dict(env), bufsize=1)
    lines: "queue.Queue[str | None]" = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    order = FollowOrder(window)
    try:
        while True:
            try:
                item = lines.get(timeout=0.1)
            except queue.Empty:
                item = ""
            if item is None:
                break
            if item:
                order.push(item, clock())
            ready = order.release(clock())
            if ready:
                out.write("\n".join(ready) + "\n")
                out.flush()
    except KeyboardInterrupt:
        proc.terminate()
    finally:
        rest = order.flush()
        if rest:
            out.write("\n".join(rest) + "\n")
            out.flush()
    return proc.wait()
