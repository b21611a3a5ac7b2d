"""tools/demo.py's verdict: it fails, with the reason, when no machine reached Running (issue 8 item 12)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPOSITORY = Path(__file__).resolve().parents[1]


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vac_demo", REPOSITORY / "tools" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("vac_demo", module)
    spec.loader.exec_module(module)
    return module


def test_no_started_machine_means_no_machine_ran_and_the_factory_error_is_the_reason(tmp_path: Path) -> None:
    demo = load_demo()
    failed = tmp_path / "var/lib/vac/machines/1700000000_work_factory1-00.vacdemo.invalid"
    failed.mkdir(parents=True)
    (tmp_path / "var/lib/vac/factory-error").write_text(
        "factory1-00.vacdemo.invalid (work): /root/vac/vmlinuz: not readable by libvirt-qemu: "
        "/root is mode 0700 owner root\n")
    assert demo.machines_that_ran(tmp_path) == set()
    assert demo.last_creation_error(tmp_path, tmp_path / "var/log/vacd").endswith(
        "not readable by libvirt-qemu: /root is mode 0700 owner root")
    (failed / "started").write_text("1700000005\n")
    assert demo.machines_that_ran(tmp_path) == {failed.name}


def test_reason_falls_back_to_the_last_creation_failure_in_the_log(tmp_path: Path) -> None:
    demo = load_demo()
    log_file = tmp_path / "vacd.log"
    log_file.write_text("INFO started\nERROR vacd.factory: creation failed name=a error=boom retry_in=30s\n")
    assert demo.last_creation_error(tmp_path, log_file) == "ERROR vacd.factory: creation failed name=a error=boom retry_in=30s"


def test_scratch_prefix_is_outside_the_clone() -> None:
    source = (REPOSITORY / "tools" / "demo.py").read_text()
    assert 'dir="/var/tmp"' in source


def test_a_demo_held_by_the_load_gate_says_so_and_what_to_wait_for(tmp_path: Path) -> None:
    demo = load_demo()
    status = tmp_path / "var/lib/vac/status.json"
    status.parent.mkdir(parents=True)
    status.write_text('{"gate": "load 11.36 > 1.25 x 2 host processors"}')
    reason = demo.last_creation_error(tmp_path, tmp_path / "vacd.log")
    assert "held by the gate (load 11.36 > 1.25 x 2 host processors)" in reason
    assert "all three load averages" in reason
