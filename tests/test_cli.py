"""tasks.py without a subprocess: every task's `-h` shows its positionals, its help texts and its
defaults; `inv submit python train.py` (no `--`) is answered with the right spelling."""

from __future__ import annotations

import inspect

import pytest
from invoke import Collection, Program

import tasks

COLLECTION = Collection.from_module(tasks)
NAMES = sorted(COLLECTION.task_names)


def help_of(name: str, capsys) -> str:
    capsys.readouterr()
    Program(namespace=COLLECTION, binary="inv").run(["inv", "--help", name], exit=False)
    return capsys.readouterr().out


def _squash(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", NAMES)
def test_help_shows_every_option_with_its_help_text_and_default(name, capsys):
    task = COLLECTION[name]
    out = _squash(help_of(name, capsys))
    params = inspect.signature(task.body).parameters
    for param, value in params.items():
        if param == "c":
            continue
        flag = ("--[no-]" if value.default is True else "--") + param.replace("_", "-")
        assert flag in out, (name, flag)
        text = task.help.get(param)
        assert text, f"inv {name} {flag} has no help text"
        assert _squash(text)[:40] in out, (name, param)
        default = value.default
        if default not in (None, inspect.Parameter.empty) and not isinstance(default, bool):
            assert f"default: {default}" in out or "default:" in _squash(text), (name, param)


@pytest.mark.parametrize("name", [n for n in NAMES if COLLECTION[n].positional])
def test_help_shows_the_positionals_in_a_usage_line(name, capsys):
    task = COLLECTION[name]
    out = help_of(name, capsys)
    usage = f"Usage: inv {name} {' '.join(p.upper() for p in task.positional)} [--options]"
    assert usage in out
    for param in task.positional:
        assert f"{param.upper()}, given without the flag" in _squash(out)


@pytest.mark.parametrize(
    "argv",
    [
        ["inv", "submit", "python", "train.py"],
        ["inv", "submit", "--wait", "python", "train.py"],
        ["inv", "submit", "--name", "run-1", "python", "train.py", "--lr", "3"],
        ["inv", "submit", "-c", "other.yaml", "python"],
    ],
)
def test_submit_without_the_separator_says_how_to_write_it(argv):
    message = tasks.submit_without_separator(argv, set(NAMES))
    i = next(i for i, a in enumerate(argv) if a == "python")
    assert message is not None and "No idea" not in message
    assert message.endswith("inv submit " + " ".join(argv[2:i] + ["--"] + argv[i:]))


@pytest.mark.parametrize(
    "argv",
    [
        ["inv", "submit", "--", "python", "train.py"],
        ["inv", "submit", "--wait", "--", "python", "train.py"],
        ["inv", "submit", "--name", "python", "--", "x.py"],  # `python` is the value of --name
        ["inv", "validate"],
        ["inv", "submit", "jobs"],  # another task follows: Invoke's own business
        ["inv", "logs", "mlflow", "--", "submit", "python"],
    ],
)
def test_submit_with_the_separator_or_without_a_command_is_left_to_invoke(argv):
    assert tasks.submit_without_separator(argv, set(NAMES)) is None


def test_the_command_line_is_checked_only_when_invoke_runs_the_tasks():
    assert tasks._run_by_invoke(["/usr/bin/inv", "submit"]) and tasks._run_by_invoke(["/x/site-packages/invoke/__main__.py"])
    assert not tasks._run_by_invoke(["/x/bin/pytest", "-k", "submit", "tests/"])
    tasks._check_command_line(["/x/bin/pytest", "-k", "submit", "python"])  # no SystemExit
    with pytest.raises(SystemExit) as caught:
        tasks._check_command_line(["/usr/bin/inv", "submit", "python"])
    assert caught.value.code == 2
