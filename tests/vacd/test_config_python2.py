"""vacd.configini reads every vac.conf as Python 2.7's RawConfigParser did (issue 10 item 4).

Vac 03 read vac.conf with Python 2's ConfigParser; vacd must see the same sections, options
and values in any file that parser accepted, and must refuse (with a line) any file it
refused. Python 3's configparser differs (an indented `# ...` is a comment there and a value
line in Python 2; `""`; which `;` starts a comment; `rem` lines), so vacd has its own reader.

The comparison runs the real Python 2.7 parser in a subprocess. It is skipped where no
python2.7 is installed; the expected values of the quirks are also pinned without it below.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from vacd.configini import ascii_split, read_sources

# Reads a JSON list of texts on stdin; prints, for each, its sections' options (with
# [DEFAULT]'s under "DEFAULT") or null if Python 2 raised a parsing error.
_PYTHON2_READER = r"""
import ConfigParser, json, sys, StringIO
results = []
for text in json.load(sys.stdin):
    parser = ConfigParser.RawConfigParser()
    try:
        parser.readfp(StringIO.StringIO(text.encode('utf-8')), 'vac.conf')
    except ConfigParser.Error:
        results.append(None)
        continue
    sections = {'DEFAULT': dict((k, v.decode('utf-8')) for k, v in parser.defaults().items())}
    for name in parser.sections():
        own = parser._sections[name]
        sections[name.decode('utf-8')] = dict((k.decode('utf-8'), v.decode('utf-8'))
                                              for k, v in own.items() if k != '__name__')
    results.append(sections)
json.dump(results, sys.stdout)
"""


def _python2() -> Optional[str]:
    for candidate in (shutil.which("python2.7"), "/root/.pyenv/versions/2.7.18/bin/python2.7",
                      "/usr/bin/python2.7", "/usr/local/bin/python2.7"):
        if candidate and os.access(candidate, os.X_OK):
            try:
                subprocess.run([candidate, "-c", "import ConfigParser"], check=True, capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                continue
            return candidate
    return None


PYTHON2 = _python2()
needs_python2 = pytest.mark.skipif(PYTHON2 is None, reason="no python2.7 to compare with")


def python2_readings(texts: list[str]) -> list[Optional[dict[str, dict[str, str]]]]:
    assert PYTHON2 is not None
    completed = subprocess.run([PYTHON2, "-c", _PYTHON2_READER], input=json.dumps(texts), capture_output=True,
                               text=True, check=True, timeout=120)
    result: list[Any] = json.loads(completed.stdout)
    return result


def vacd_reading(text: str) -> Optional[dict[str, dict[str, str]]]:
    raw, problems = read_sources([("vac.conf", text)])
    if problems:
        return None
    sections = {"DEFAULT": {option: source.value for option, source in raw.defaults.items()}}
    for name, options in raw.sections.items():
        sections[name] = {option: source.value for option, source in options.items()}
    return sections


# Lines built from the pieces that the two parsers treat differently.
_WORDS = st.sampled_from(["settings", "Settings", "DEFAULT", "machinetype lhcb", "Machinetype  LHCb ", "a", "B",
                          "rem", "REM", "Rem x", "x;y", "x ;y", ";", " ;", '""', '"', "#", "=", ":", "[", "]",
                          "a=b", "\t", "\r", "\x0c", "\xa0", "é", "é", "ü", "  ", "1", "yes"])
_LINE = st.one_of(
    st.builds(lambda name: f"[{name}]", _WORDS),
    st.builds(lambda indent, name, separator, value: f"{indent}{name}{separator}{value}",
              st.sampled_from(["", " ", "\t"]), _WORDS, st.sampled_from([" = ", "=", ": ", ":", " "]),
              st.lists(_WORDS, max_size=4).map(" ".join)),
    st.builds(lambda indent, text: indent + text, st.sampled_from(["", " ", "  ", "\t"]),
              st.lists(_WORDS, max_size=3).map("".join)),
)
_TEXT = st.lists(_LINE, max_size=8).map(lambda lines: "[settings]\n" + "\n".join(lines) + "\n")


@needs_python2
@pytest.mark.allow_commands("python2.7")
@hypothesis_settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TEXT, min_size=100, max_size=100))
def test_every_file_reads_as_python2_read_it(texts: list[str]) -> None:
    for text, expected in zip(texts, python2_readings(texts)):
        assert vacd_reading(text) == expected, text


@needs_python2
@pytest.mark.allow_commands("python2.7")
def test_the_pinned_quirks_are_python2s() -> None:
    texts = [text for text, _ in QUIRKS]
    assert python2_readings(texts) == [vacd_reading(text) for text in texts]


QUIRKS = [
    # An indented comment line continues the value above it (Python 3 drops it).
    ("[settings]\nfactories = f1.example.org\n  # f2.example.org\n",
     {"DEFAULT": {}, "settings": {"factories": "f1.example.org\n# f2.example.org"}}),
    # Two double quotes are an empty value.
    ('[settings]\ndescription = ""\n', {"DEFAULT": {}, "settings": {"description": ""}}),
    # Only the first ";" can start a comment, and only after whitespace.
    ("[settings]\ndescription = a;b ;c\n", {"DEFAULT": {}, "settings": {"description": "a;b ;c"}}),
    ("[settings]\ndescription = a ;b ;c\n", {"DEFAULT": {}, "settings": {"description": "a"}}),
    # No comment inside continuation lines.
    ("[settings]\ndescription = a\n  b ;c\n", {"DEFAULT": {}, "settings": {"description": "a\nb ;c"}}),
    # "rem" at the start of a line is a comment.
    ("[settings]\nrem = 1\nREM this is a comment\n", {"DEFAULT": {}, "settings": {}}),
    # Section names are kept as written; option names lower-cased (ASCII only).
    ("[Machinetype LHCb]\nTarget_Share = 1\n", {"DEFAULT": {}, "Machinetype LHCb": {"target_share": "1"}}),
]


@pytest.mark.parametrize("text, expected", QUIRKS)
def test_python2_quirks_are_kept(text: str, expected: dict[str, dict[str, str]]) -> None:
    assert vacd_reading(text) == expected


@pytest.mark.parametrize("text", ["  [settings]\nx = 1\n", "[settings]\n  x = 1\n", "x = 1\n[settings]\n",
                                  "[settings]\nno separator here\n"])
def test_what_python2_refused_is_refused_with_a_line(text: str) -> None:
    _, problems = read_sources([("/etc/vac.conf", text)])
    assert problems and all(problem.line is not None and problem.path == "/etc/vac.conf" for problem in problems)


@given(st.text(alphabet=st.sampled_from("ab \t\r\x0b\x0c\xa0\n")), st.integers(-1, 3))
def test_ascii_split_is_python2_bytes_split(text: str, maxsplit: int) -> None:
    expected = [word.decode("latin-1") for word in text.encode("latin-1").split(None, maxsplit)]
    assert ascii_split(text, maxsplit) == expected
