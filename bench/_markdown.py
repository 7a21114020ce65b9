"""The benches' one way to record their figures: replace a bench's own section (from its
heading to the next `## ` heading) of a Markdown file such as docs/benchmarks.md, or append it."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, heading: str, text: str) -> None:
    """Write ``text`` (which starts with ``heading``) in place of that section of ``path``."""
    old = path.read_text() if path.exists() else ""
    if heading in old:
        before, _, after = old.partition(heading)
        rest = after.split("\n## ", 1)
        old = before + text + ("\n## " + rest[1] if len(rest) > 1 else "")
    else:
        old = old.rstrip("\n") + "\n\n" + text
    path.write_text(old)
