"""Turn vac.conf texts into located raw options, and option texts into typed values.

This is the lowest layer of configuration reading; `vacd.configparse` builds Settings and
Machinetypes on top of it. Rules:

* Pure: texts in, values and `ConfigProblem`s out. No file, clock or host access.
* Python 2.7's `RawConfigParser`, which Vac 03 used (behaviour reference §2.1), line by
  line: option names lower-cased (ASCII only), section names kept as written, indented
  continuation lines (an indented `# ...` is part of the value, not a comment), `[DEFAULT]`
  values propagated to every section, no interpolation, repeated sections and options
  merged (later wins), only the first `;` of a value and only after whitespace starting a
  comment, `""` read as an empty value, and `rem` lines as comments. Python 3's
  configparser differs in each of these, so it is not used: the same file must give the
  same values as under Vac 03 (issue 10 item 4). tests/vacd/test_config_python2.py
  compares this reader with Python 2.7's own parser on generated files.
* Sources are read in the order given and the later one wins per (section, option).
* Every value remembers the file and line it came from, so a problem found later, even
  one about an option's relation to another, names the file and line an admin must edit.
* Converters never raise for bad input: they record a problem and fall back to a default,
  so one reading reports every problem at once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Optional, Sequence, TypeVar

from vacd.errors import ConfigProblem

DEFAULT_SECTION = "DEFAULT"

T = TypeVar("T")

# A ConfigProblem's path for facts that come from the host rather than from a file.
HOST_FACTS_PATH = "<host>"

_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_INTEGER_DIGITS = 30
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Words accepted for yes/no options. Vac 03 read "yes" (draining), "true" (user_data_proxy)
# or "false" (fix_networking) and silently treated anything else as the other answer;
# vacd accepts the usual spellings of both and rejects the rest (a typo must not drain).
_TRUE_WORDS = frozenset({"yes", "true", "on", "1"})
_FALSE_WORDS = frozenset({"no", "false", "off", "0"})


@dataclass(frozen=True)
class Location:
    """Where something was read: a file (or URL) and, when known, a line."""

    path: str
    line: Optional[int] = None


@dataclass(frozen=True)
class OptionSource:
    """One effective option value and where it came from."""

    value: str
    path: str
    line: Optional[int] = None

    @property
    def location(self) -> Location:
        return Location(self.path, self.line)


@dataclass(frozen=True)
class RawConfig:
    """The merged INI: each section's own options (not [DEFAULT]'s), with their sources.

    `headers` holds where each section header was first seen, to locate problems about
    options that are missing or left at their default.
    """

    sections: Mapping[str, Mapping[str, OptionSource]] = field(default_factory=dict)
    defaults: Mapping[str, OptionSource] = field(default_factory=dict)
    headers: Mapping[str, Location] = field(default_factory=dict)

    def options(self, section: str) -> dict[str, OptionSource]:
        """The section's effective options: [DEFAULT]'s overlaid by its own (§2.1)."""
        merged = dict(self.defaults)
        merged.update(self.sections.get(section, {}))
        return merged

    def locate(self, section: str, option: Optional[str] = None) -> Location:
        """The option's source if it was set, else the section header, else unknown."""
        if option is not None:
            source = self.options(section).get(option)
            if source is not None:
                return source.location
        return self.headers.get(section, Location(HOST_FACTS_PATH))


@dataclass
class _FileReading:
    sections: dict[str, dict[str, OptionSource]] = field(default_factory=dict)
    defaults: dict[str, OptionSource] = field(default_factory=dict)
    headers: dict[str, Location] = field(default_factory=dict)
    problems: list[ConfigProblem] = field(default_factory=list)


# Python 2's ConfigParser worked on bytes: only ASCII whitespace counted, and lower() and
# split() knew nothing else. vacd reads UTF-8 text, so these stand in for them.
_ASCII_WHITESPACE = " \t\n\r\x0b\x0c"
# Python 2.7's RawConfigParser.SECTCRE and OPTCRE, matched from the start of the raw line.
_SECTION_HEADER = re.compile(r"\[(?P<header>[^]]+)\]", re.ASCII)
_OPTION_LINE = re.compile(r"(?P<option>[^:=\s][^:=]*)\s*(?P<vi>[:=])\s*(?P<value>.*)$", re.ASCII)


_ASCII_WHITESPACE_RUN = re.compile(r"[ \t\n\r\x0b\x0c]+")
_ASCII_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}


def ascii_lower(text: str) -> str:
    """str.lower() of Python 2's byte strings: only A-Z change (ConfigParser's optionxform)."""
    return text.translate(_ASCII_LOWER)


def ascii_split(text: str, maxsplit: int = -1) -> list[str]:
    """str.split(None, maxsplit) of Python 2's byte strings: only ASCII whitespace separates.

    As there, the last word keeps its trailing whitespace when `maxsplit` stops the split
    ('machinetype lhcb '.split(None, 1) is ['machinetype', 'lhcb ']).
    """
    text = text.lstrip(_ASCII_WHITESPACE)
    if maxsplit == 0:
        return [text] if text else []
    words = _ASCII_WHITESPACE_RUN.split(text, maxsplit=max(maxsplit, 0))
    if words[-1] == "":
        words.pop()
    return words


def _raw_lines(text: str) -> Iterator[str]:
    """The text's lines as Python 2's readline() gave them: split on "\\n" only, ends kept."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def _is_comment_or_blank(line: str) -> bool:
    if line.strip(_ASCII_WHITESPACE) == "" or line[0] in "#;":
        return True
    # Python 2 also took an unindented "rem" (any case) as the first word for a comment.
    first_word = ascii_split(line, 1)[0]
    return ascii_lower(first_word) == "rem" and line[0] in "rR"


def _option_value(vi: str, value: str) -> str:
    if vi in ("=", ":") and ";" in value:
        # Only the first ";", and only after whitespace, starts a comment. Python 2 looked at
        # value[position - 1], which for a value that starts with ";" is its last character.
        position = value.find(";")
        if value[position - 1] in _ASCII_WHITESPACE:
            value = value[:position]
    value = value.strip(_ASCII_WHITESPACE)
    # Python 2 read a value of two double quotes as empty.
    return "" if value == '""' else value


# One section while a file is read: option -> (its lines' values, the line it starts on).
_Parts = dict[str, tuple[list[str], int]]


def _joined(parts: _Parts, path: str) -> dict[str, OptionSource]:
    return {option: OptionSource("\n".join(values), path, line) for option, (values, line) in parts.items()}


# A line that sets a user_data_option_* (vacd.config.SECRET_OPTION_PREFIXES; that module
# imports this one), whatever else is wrong with it: its value may be a token, and an error
# message goes to the journal (vacd.service runs --check-config), which more than root reads.
_SECRET_OPTION_LINE = re.compile(r"^(\s*user_data_option_\S*?)(\s*[=:]\s*|\s+)\S.*$", re.IGNORECASE)
_MASKED_VALUE = "********"  # vacd.config.MASK


def _shown_line(line: str) -> str:
    line = line.rstrip("\r\n")
    line = _SECRET_OPTION_LINE.sub(lambda setting: setting.group(1) + setting.group(2) + _MASKED_VALUE, line)
    return line if len(line) <= 60 else line[:57] + "..."


def _read_one(path: str, text: str) -> _FileReading:
    """One file, read line by line exactly as Python 2.7's RawConfigParser._read did."""
    reading = _FileReading()
    defaults: _Parts = {}
    sections: dict[str, _Parts] = {}
    # The section being filled (None before the first header) and the option that an
    # indented line continues (None right after a header).
    current: Optional[_Parts] = None
    continued: Optional[list[str]] = None
    for line_number, line in enumerate(_raw_lines(text), start=1):
        if _is_comment_or_blank(line):
            continue
        if line[0] in _ASCII_WHITESPACE and current is not None and continued is not None:
            # A continuation line; a blank one adds nothing.
            part = line.strip(_ASCII_WHITESPACE)
            if part:
                continued.append(part)
            continue
        header = _SECTION_HEADER.match(line)
        if header:
            name = header.group("header")
            if name == DEFAULT_SECTION:
                current = defaults
            else:
                current = sections.setdefault(name, {})
                reading.headers.setdefault(name, Location(path, line_number))
            continued = None
            continue
        if current is None:
            reading.problems.append(ConfigProblem(
                path, line_number, None, None, f"option outside any [section]: {_shown_line(line)!r}"))
            # Python 2 gave up on the file here (MissingSectionHeaderError).
            break
        option = _OPTION_LINE.match(line.rstrip("\n"))
        if option is None:
            reading.problems.append(ConfigProblem(
                path, line_number, None, None, f"cannot parse {_shown_line(line)!r}: expected "
                "'option = value', '[section]', a comment or an indented continuation"))
            continue
        continued = [_option_value(option.group("vi"), option.group("value"))]
        # A repeated option replaces the earlier one, line and all.
        current[ascii_lower(option.group("option").rstrip(_ASCII_WHITESPACE))] = (continued, line_number)
    reading.defaults.update(_joined(defaults, path))
    for name, parts in sections.items():
        reading.sections[name] = _joined(parts, path)
    return reading


def read_sources(sources: Sequence[tuple[str, str]]) -> tuple[RawConfig, list[ConfigProblem]]:
    """Read (path, text) pairs in precedence order into one merged RawConfig.

    Returns the merged options and every syntax problem found (each with file and line);
    what could be read around a bad line is still returned, so later checks can run.
    """
    sections: dict[str, dict[str, OptionSource]] = {}
    defaults: dict[str, OptionSource] = {}
    headers: dict[str, Location] = {}
    problems: list[ConfigProblem] = []
    for path, text in sources:
        reading = _read_one(path, text)
        problems.extend(reading.problems)
        defaults.update(reading.defaults)
        for name, options in reading.sections.items():
            sections.setdefault(name, {}).update(options)
        for name, location in reading.headers.items():
            headers.setdefault(name, location)
    return RawConfig(sections, defaults, headers), problems


class InvalidValue(ValueError):
    """A converter's complaint about one value; becomes a ConfigProblem's reason."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def to_integer(text: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """Decimal integer within optional bounds (Python's int() would also take '1_0' and '٣')."""
    stripped = text.strip()
    if not _INTEGER.fullmatch(stripped):
        raise InvalidValue(f"expected an integer, got {_shown(text)}")
    if len(stripped) > _MAX_INTEGER_DIGITS:
        # Python refuses int() of very long digit strings; no option needs such a number.
        raise InvalidValue(f"integer too large, got {_shown(text)}")
    value = int(stripped)
    _check_bounds(value, minimum, maximum)
    return value


def to_number(text: str, minimum: Optional[float] = None, maximum: Optional[float] = None,
              positive: bool = False) -> float:
    """Finite decimal number within optional bounds."""
    stripped = text.strip()
    if not _NUMBER.fullmatch(stripped):
        raise InvalidValue(f"expected a number, got {_shown(text)}")
    value = float(stripped)
    if not math.isfinite(value):
        raise InvalidValue(f"expected a finite number, got {_shown(text)}")
    if positive and value <= 0:
        raise InvalidValue(f"must be > 0, got {stripped}")
    _check_bounds(value, minimum, maximum)
    return value


def _check_bounds(value: float, minimum: Optional[float], maximum: Optional[float]) -> None:
    if minimum is not None and value < minimum:
        raise InvalidValue(f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidValue(f"must be <= {maximum}, got {value}")


def to_boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise InvalidValue(f"expected yes or no (true/false, on/off, 1/0), got {_shown(text)}")


def to_choice(text: str, choices: Sequence[str]) -> str:
    word = text.strip()
    if word not in choices:
        raise InvalidValue(f"expected one of {', '.join(choices)}, got {_shown(text)}")
    return word


def to_matching(text: str, pattern: re.Pattern[str], what: str) -> str:
    word = text.strip()
    if not pattern.fullmatch(word):
        raise InvalidValue(f"expected {what}, got {_shown(text)}")
    return word


def to_absolute_path(text: str) -> str:
    word = text.strip()
    if not word.startswith("/") or any(character.isspace() or not character.isprintable()
                                       for character in word):
        raise InvalidValue(f"expected an absolute path without spaces, got {_shown(text)}")
    return word


def to_words(text: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    """A space-separated list whose every item must match `pattern`."""
    words = tuple(text.split())
    bad = [word for word in words if not pattern.fullmatch(word)]
    if bad:
        raise InvalidValue(f"expected {what}, got {_shown(bad[0])}")
    return words


@dataclass
class Findings:
    """Problems (fatal) and warnings (reported, not fatal) gathered during one reading."""

    problems: list[ConfigProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class SectionReader:
    """Typed access to one section's options that records problems instead of raising.

    It remembers which options were asked for, so the rest can be reported as unknown.
    `own` names the options set in the section itself: unknown options inherited from
    [DEFAULT] are not the section's fault and are not reported.
    """

    def __init__(self, section: str, options: Mapping[str, OptionSource], own: frozenset[str],
                 header: Location, findings: Findings) -> None:
        self.section = section
        self.options = options
        self.own = own
        self.header = header
        self.findings = findings
        self.used: set[str] = set()
        self.chosen: dict[str, str] = {}

    def has(self, option: str) -> bool:
        return option in self.options

    def location(self, option: Optional[str]) -> Location:
        source = self.options.get(option) if option is not None else None
        return source.location if source is not None else self.header

    def problem(self, option: Optional[str], reason: str) -> None:
        where = self.location(option)
        self.findings.problems.append(ConfigProblem(where.path, where.line, self.section, option, reason))

    def warn(self, option: Optional[str], reason: str) -> None:
        where = self.location(option)
        self.findings.warnings.append(str(ConfigProblem(where.path, where.line, self.section, option, reason)))

    def raw(self, option: str) -> Optional[str]:
        self.used.add(option)
        source = self.options.get(option)
        return None if source is None else source.value

    def get(self, option: str, default: T, convert: Callable[[str], T]) -> T:
        """The converted value, or `default` when unset or invalid (then a problem is recorded)."""
        text = self.raw(option)
        if text is None:
            return default
        try:
            return convert(text)
        except InvalidValue as invalid:
            self.problem(option, str(invalid))
            return default

    def renamed(self, option: str, vac_order: Sequence[str]) -> str:
        """Which of `option` and its deprecated names to read, as Vac 03 chose (§2.5).

        `vac_order` lists every name, `option` among them, in the order Vac 03 tried them:
        the first one set is read. Vac took `mb_per_cpu` over `mb_per_processor` but
        `processors_per_superslot` over `vcpu_per_machine`, so the order is per option.
        Each deprecated name set is a warning; two names set to different values is a loud
        one, at the line that is not used and naming the line that is, so that the factory
        runs with the value Vac 03 ran with and the admin sees that the other is dead.
        """
        self.used.update(vac_order)
        for old in vac_order:
            if old != option and old in self.options:
                self.warn(old, f"deprecated name, use {option} instead")
        given = [name for name in vac_order if name in self.options]
        if not given:
            return option
        self.chosen[option] = given[0]
        chosen = self.options[given[0]]
        for other in given[1:]:
            unused = self.options[other]
            if unused.value.strip() != chosen.value.strip():
                where = f"{chosen.path}:{chosen.line}" if chosen.line is not None else chosen.path
                self.warn(other, f"NOT USED: {given[0]} = {chosen.value.strip()!r} ({where}) is, as Vac 03 read "
                                 f"{given[0]} before {other}; remove one of the two")
        return given[0]

    def chosen_name(self, option: str) -> str:
        """The name `renamed` chose for `option` (to locate a message at its line), else `option`."""
        return self.chosen.get(option, option)

    def ignore(self, option: str, reason: str) -> None:
        """An option Vac 03 accepted but no longer uses: warn, do not fail (§2.2, §2.4)."""
        self.used.add(option)
        if option in self.own:
            self.warn(option, f"ignored: {reason}")

    def prefixed(self, prefix: str, name_pattern: re.Pattern[str]) -> dict[str, str]:
        """Options named `prefix` + NAME, keyed by NAME; NAMEs outside the pattern are errors (§2.1)."""
        found: dict[str, str] = {}
        for option, source in self.options.items():
            if not option.startswith(prefix):
                continue
            self.used.add(option)
            name = option[len(prefix):]
            if name_pattern.fullmatch(name):
                found[name] = source.value
            else:
                self.problem(option, f"the part after {prefix} must use only a-z, 0-9 and _, got {name!r}")
        return found

    def warn_unknown(self, what: str) -> None:
        """Vac 03 silently ignored unknown options; a warning catches typos without failing."""
        for option in self.options:
            if option not in self.used and option in self.own:
                self.warn(option, f"unknown option for {what}, ignored")
