"""The pure core never reaches the outside world (design.md rule 1, style.md "Layout").

A core module, and every project module it imports at module level (transitively), must
not import socket, subprocess, asyncio, libvirt, time or random: time and randomness are
arguments, and I/O lives in the edge modules. Imports inside functions are edge code by
construction (they run only when an edge caller calls them) and are not followed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
FORBIDDEN = {"socket", "subprocess", "asyncio", "libvirt", "time", "random"}
CORE_MODULES = (
    "vacd.scheduler",
    "vacd.preemption",
    "vacd.diskspace",
    "vacd.policing",
    "vacd.outcomes",
    "vacd.slots",
    "vacd.configini",
    "vacd.configparse",
    "vacd.pipes",
    "vacd.userdata",
    "vacd.backends.domainxml",
    "vacd.lvm",
    "vacd.records",
    "vacd.recordformats",
    "vacd.guestapi.metadata",
    "vacd.guestapi.features",
    "vacd.guestapi.requestpath",
    "vacd.guestapi.uploadnames",
    "vacd.guestapi.tokens",
    "vacd.guestapi.slotlimits",
    "vacquery.messages",
    "vacquery.codec",
    "vacquery.client",
    "vacquery.responder",
    "vacquery.tables",
    "vacd.dashboard.view",
    "vacd.dashboard.render",
)


def module_path(module: str) -> Path:
    base = REPOSITORY.joinpath(*module.split("."))
    return base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"


def top_level_imports(module: str) -> set[str]:
    tree = ast.parse(module_path(module).read_text())
    imported: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks are not run
            continue
    return imported


def project_module(name: str) -> bool:
    return name.split(".")[0] in ("vacd", "vacquery") and (
        module_path(name).exists() if name.count(".") else True
    )


def forbidden_reach(module: str) -> list[str]:
    """Chains `core -> ... -> forbidden` found by following module-level project imports."""
    chains: list[str] = []
    seen: set[str] = set()
    pending: list[tuple[str, tuple[str, ...]]] = [(module, (module,))]
    while pending:
        current, chain = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in top_level_imports(current):
            if name.split(".")[0] in FORBIDDEN:
                chains.append(" -> ".join((*chain, name)))
            elif project_module(name) and name not in seen:
                pending.append((name, (*chain, name)))
    return chains


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_does_no_io_and_reads_no_clock(module: str) -> None:
    assert forbidden_reach(module) == []
