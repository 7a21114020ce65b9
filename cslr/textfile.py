"""The first gate of loading: read a user-supplied text file (config.yaml, .env) safely.

A file is read only if it is a regular file (directories, FIFOs, sockets and devices such as a
link to /dev/zero are refused from `stat`, before any open that could block), no larger than
`MAX_BYTES`, and valid UTF-8. Every refusal is a `ConfigFileError` naming the file (and, for a
bad byte, its line and column): exit 2, no traceback, nothing read beyond the cap.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigFileError, Location

MAX_BYTES = 1024 * 1024  # 1 MiB: the shipped config.yaml is ~4 KiB

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_text(path: str | os.PathLike, display: str, max_bytes: int = MAX_BYTES, missing_hint: str = "") -> str:
    """Return the file's text, or raise ConfigFileError. `display` is the name used in messages."""
    where = Location(display)
    try:
        st = os.stat(path)  # follows links: a link to /dev/zero is judged by its target
    except FileNotFoundError:
        raise ConfigFileError(where, f"file not found ({Path(path).resolve()}){missing_hint}") from None
    except OSError as exc:
        raise ConfigFileError(where, f"cannot stat the file: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigFileError(where, f"found {_kind(st.st_mode)}, expected a regular file")
    if st.st_size > max_bytes:
        raise ConfigFileError(where, f"found {st.st_size} bytes, expected at most {max_bytes} bytes")
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO after the stat, open does not block.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigFileError(where, f"cannot open the file: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigFileError(where, f"found {_kind(os.fstat(fd).st_mode)}, expected a regular file")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(65536, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise ConfigFileError(where, f"cannot read the file: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise ConfigFileError(where, f"found more than {max_bytes} bytes, expected at most {max_bytes} bytes")
    return decode(data, display)


def decode(data: bytes, display: str) -> str:
    """UTF-8 (a leading BOM is dropped); a bad byte is reported with its line and column."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
        line = data.count(b"\n", 0, start) + 1
        line_start = data.rfind(b"\n", 0, start) + 1
        column = len(data[line_start:start].decode("utf-8", errors="replace")) + 1
        raise ConfigFileError(Location(display, line, column), f"found byte 0x{data[start]:02x}, which is not UTF-8; expected a UTF-8 text file") from None
    return text[1:] if text.startswith("\ufeff") else text
