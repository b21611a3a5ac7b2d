"""The RPMs of vac.spec, built once for the packaging tests that query or lint them."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BuiltPackages:
    srpm: Path
    rpms: dict[str, Path]


@pytest.fixture(scope="session")
def built_packages(tmp_path_factory: pytest.TempPathFactory) -> BuiltPackages:
    """`make sdist` then `rpmbuild -ta` of the tarball, as a packager would.

    The tests that use it are marked allow_commands("make", "rpmbuild", "rpm", ...): the
    first of them runs the build.
    """
    for tool, package in (("rpmbuild", "rpm"), ("make", "make")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install {package})")
    # The build's Python needs pip, setuptools and wheel: the host's, as on EL9.
    python = "/usr/bin/python3"
    probe = subprocess.run([python, "-c", "import setuptools, wheel, pip"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"{python} lacks pip, setuptools or wheel (apt-get install python3-pip python3-wheel)")
    work = tmp_path_factory.mktemp("rpmbuild")
    dist = work / "dist"
    completed = subprocess.run(["make", "-s", "-C", str(REPOSITORY), "sdist", f"PYTHON={python}",
                                f"DIST_DIR={dist}"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    setup_cfg = configparser.ConfigParser(interpolation=None)
    setup_cfg.read(REPOSITORY / "setup.cfg", encoding="utf-8")
    tarball = dist / f"vac-{setup_cfg['metadata']['version']}.tar.gz"
    assert tarball.is_file()
    # --nodeps: this host's rpm database does not hold EL9's BuildRequires.
    completed = subprocess.run(
        ["rpmbuild", "-ta", "--nodeps", "--define", f"_topdir {work / 'top'}", "--define", f"python3 {python}",
         str(tarball)], capture_output=True, text=True, timeout=600, cwd=work)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    srpms = list((work / "top/SRPMS").glob("*.src.rpm"))
    rpms = {path.name.rsplit("-", 2)[0]: path for path in (work / "top/RPMS/noarch").glob("*.noarch.rpm")}
    assert len(srpms) == 1
    return BuiltPackages(srpm=srpms[0], rpms=rpms)
