"""Every `inv …` command line in README.md and docs/ parses against the task definitions (issue 19):
the task exists and every flag it is given is one of that task's options. Docs drift silently
otherwise: a renamed flag would keep being recommended."""

from __future__ import annotations

import re

import pytest
from invoke import Collection

import tasks
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*/README.md"))]
CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.S)
INV = re.compile(r"(?:^|[\s(;&|])(?:\S*/)?inv ([a-z][\w -].*)")


def command_lines() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for block, inline in CODE.findall(doc.read_text()):
            for line in (block or inline).splitlines():
                m = INV.search(line)
                if m:
                    out.append((f"{doc.relative_to(ROOT)}", m.group(1)))
    return out


def words(rest: str) -> list[str]:
    """The task's words: up to a comment, a pipe, a redirection, `&&` or `--` (a job's command)."""
    out = []
    for word in rest.split():
        if word.startswith("#") or word in ("|", "||", "&&", ";", ">>", ">", "--", "2>&1"):
            break
        out.append(word.strip("[]()"))
    return [w for w in out if w]


COLLECTION = Collection.from_module(tasks)
LINES = command_lines()


def test_the_docs_have_command_lines_to_check():
    assert len(LINES) > 40  # the check below ran over something


@pytest.mark.parametrize("doc, rest", LINES, ids=[f"{d}: inv {r[:40]}" for d, r in LINES])
def test_each_documented_command_parses(doc, rest):
    argv = words(rest)
    if not argv:
        return
    name = argv[0]
    if name.startswith("-"):
        pytest.fail(f"{doc}: `inv {rest}` puts an option before the task (Invoke's own options; refused by the tasks)")
    assert name in COLLECTION.task_names or name in {a for t in COLLECTION.task_names for a in COLLECTION.tasks[t].aliases}, (
        f"{doc}: `inv {rest}`: no task {name!r}"
    )
    task = COLLECTION[name]
    known = set()
    for arg in task.get_arguments():
        known |= {("--" if len(n) > 1 else "-") + n for n in arg.names}
        if arg.kind is bool and arg.default is True:  # Invoke's inverse flag of a default-on switch
            known |= {f"--no-{n}" for n in arg.names if len(n) > 1}
    known |= {"-h", "--help"}
    for word in argv[1:]:
        if word.startswith("-") and not re.fullmatch(r"-+", word):
            flag = word.split("=", 1)[0].rstrip(",.:")
            assert flag in known, f"{doc}: `inv {rest}`: {name} has no option {flag} (it has {', '.join(sorted(known))})"
