"""`.env` writing and reading: `format_dotenv` round-trips every value byte for byte through
`parse_dotenv`, or refuses it (a newline, NUL, other control characters) with an error naming
the key. The same lines through the real Compose binary are in tests/contract/test_dotenv_compose.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cslr import config
from cslr.config import DotenvValueError

# Every character a value may hold: all of Unicode except control characters (tab is allowed)
# and lone surrogates (not encodable in a UTF-8 file).
PRINTABLE = st.characters(blacklist_categories=("Cc", "Cs")) | st.just("\t")
VALUES = st.text(PRINTABLE, max_size=40)
KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
NASTY = [
    "it's",
    "a\\b",
    "\\",
    "'",
    '"',
    "$HOME",
    "${X}",
    "$$",
    "a #b",
    "#x",
    " lead",
    "trail ",
    "\\n",
    "tab\there",
    "x='y'",
    'q"\'"',
    "é日本\u2028",
    "=",
    "`cmd`",
]


def round_trip(values: dict) -> dict:
    return {k: v for k, (v, _) in config.parse_dotenv(config.format_dotenv(values, "header\nline two"), ".env").items()}


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=8))
def test_every_printable_value_round_trips(values):
    assert round_trip(values) == values


@pytest.mark.parametrize("value", NASTY)
def test_quotes_and_backslashes_survive(value):
    assert round_trip({"K": value}) == {"K": value}


@pytest.mark.parametrize("value, named", [("a\nb", "U+000A"), ("a\x00b", "U+0000"), ("a\rb", "U+000D"), ("\x1b[31m", "U+001B")])
def test_values_no_line_can_carry_are_refused_by_key(value, named):
    with pytest.raises(DotenvValueError) as info:
        config.format_dotenv({"REDIS_PASSWORD": value})
    message = str(info.value)
    assert message.startswith(f"cannot write REDIS_PASSWORD to an env file: its value contains {named}")
    assert value not in message and info.value.exit_code == 2


def test_bad_key_is_refused():
    with pytest.raises(DotenvValueError, match="expected a variable name"):
        config.format_dotenv({"A-B": "x"})


def test_safe_values_stay_unquoted_and_others_are_single_quoted():
    text = config.format_dotenv({"A": "x/y:1,2", "B": "with space", "C": "it's $X"})
    assert text.splitlines() == ["A=x/y:1,2", "B='with space'", 'C="it\'s \\$X"']


@pytest.mark.parametrize(
    "line, value",
    [
        ("A=plain # comment", "plain"),
        ("A='lit $X \\n' # c", "lit $X \\n"),
        ('A="x\\ty\\q$$z\\$"', "x\ty\\q$z$"),
        ("A='a\\'b'", "a'b"),
        ("A='x\\\\'", "x\\\\"),
        ("A='a\\\\\\'b'", "a\\\\'b"),
        ("export A=1", "1"),
        ("  A = spaced  ", "spaced"),
        ("A=", ""),
        ("A=a#b", "a#b"),
        ("A=x\r", "x"),
    ],
)
def test_parse_dotenv_follows_composes_dialect(line, value):
    assert config.parse_dotenv(line + "\n", ".env")["A"][0] == value


def test_text_after_a_closing_quote_is_an_error_naming_the_key():
    with pytest.raises(config.ConfigSyntaxError, match=r"\.env:1:1: syntax error: A: found text after the closing quote"):
        config.parse_dotenv("A='x' y\n", ".env")
