"""rpmlint on vac.spec and the RPMs it builds, with the allow-list vac.rpmlintrc.

Each filter in vac.rpmlintrc says why it is there (what Debian's rpm cannot do, openSUSE
policy in the defaults Debian's rpmlint ships, rpmlint's false positives, deliberate
choices); anything else rpmlint reports fails these tests. A filter that no longer matches
anything fails too (rpmlint reports it as unused-rpmlintrc-filter), so the allow-list stays
minimal.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import BuiltPackages

REPOSITORY = Path(__file__).resolve().parents[2]
SPEC = REPOSITORY / "vac.spec"
RPMLINTRC = REPOSITORY / "vac.rpmlintrc"
# rpmlint's report lines: "vac.noarch: W: name details" and "vac.spec:12: E: name details".
FINDING = re.compile(r"^\S+: [EW]: ")


def rpmlint(*arguments: str) -> list[str]:
    """rpmlint's findings, allow-list applied."""
    executable = shutil.which("rpmlint")
    if executable is None:
        pytest.skip("rpmlint is not installed (apt-get install rpmlint)")
    completed = subprocess.run([executable, *arguments], capture_output=True, text=True, timeout=300)
    findings = [line for line in completed.stdout.splitlines() if FINDING.match(line)]
    # Exit status 64 (errors) or 66 (badness over the threshold) with findings; 0 without.
    assert completed.returncode in (0, 64, 66), completed.stdout + completed.stderr
    return findings


def test_every_filter_of_the_allow_list_says_why() -> None:
    lines = RPMLINTRC.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line.startswith("addFilter("):
            previous = lines[index - 1]
            assert previous.startswith("# ") or previous.startswith("addFilter("), line
            assert re.fullmatch(r'addFilter\(r"[^"]+"\)', line), line


@pytest.mark.allow_commands("rpmlint")
def test_spec_is_rpmlint_clean() -> None:
    # Alone, the spec leaves the filters for the built packages unused; the test of the
    # built RPMs below lints the spec with them and lets no filter go unused.
    findings = rpmlint("-r", str(RPMLINTRC), str(SPEC))
    assert [finding for finding in findings if "unused-rpmlintrc-filter" not in finding] == []


@pytest.mark.slow
@pytest.mark.allow_commands("make", "rpmbuild", "rpm", "rpmlint")
def test_built_rpms_are_rpmlint_clean(built_packages: BuiltPackages) -> None:
    packages = [str(built_packages.srpm), *(str(path) for path in built_packages.rpms.values())]
    assert rpmlint("-r", str(RPMLINTRC), *packages, str(SPEC)) == []
