"""Plain-text tables for the `vac` command: aligned columns, human units, 80 columns wide.

Pure formatting (time is an argument), so every layout has a golden test
(tests/vacquery/test_tables.py). The wire field names of the statuses (§3.4-§3.6) are read
here because these tables show them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Optional, Sequence

SCREEN_COLUMNS = 80
MODEL_CLASSES = {"cernvm3": "VM", "cernvm4": "VM", "vm-raw": "VM", "docker": "DC", "singularity": "SC"}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# ---------------------------------------------------------------------- human units


def human_duration(seconds: Optional[float]) -> str:
    """`45s`, `12m`, `5.2h`, `3.1d`; empty for None."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def human_kilobytes(kilobytes: Optional[float]) -> str:
    """`512K`, `12.3M`, `450.1G`, `1.2T`; `-` for None."""
    if kilobytes is None:
        return "-"
    value = float(kilobytes)
    for unit in ("K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "K" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"


def local_time(epoch_seconds: Optional[float], with_seconds: bool = False) -> str:
    """`Nov 22 01:02` (local time, English month names whatever the locale); `-` for None."""
    if not epoch_seconds:
        return "-"
    moment = datetime.fromtimestamp(epoch_seconds)
    text = f"{_MONTHS[moment.month - 1]} {moment.day:02d} {moment:%H:%M}"
    return text + f":{moment:%S}" if with_seconds else text


def short_name(fqdn: Optional[str]) -> str:
    return (fqdn or "-").split(".", 1)[0]


class Span(str):
    """A row's last cell that may run on across the columns after it (a shutdown message
    where a running machine's figures would be); it does not widen its column."""


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns aligned under `headers`, two spaces apart, each line cut at 80 columns.

    Rows may be shorter than the header: missing cells are blank.
    """
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row):
            if not isinstance(cell, Span):
                widths[index] = max(widths[index], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells: list[str] = []
        for index, cell in enumerate(row):
            if isinstance(cell, Span):
                cells.append(cell)
            elif index in right:
                cells.append(cell.rjust(widths[index]))
            else:
                cells.append(cell.ljust(widths[index]))
        line = "  ".join(cells).rstrip()
        lines.append(line if len(line) <= SCREEN_COLUMNS else line[: SCREEN_COLUMNS - 1] + "~")
    return "\n".join(lines) + "\n"


def as_number(value: Any) -> Optional[float]:
    """A JSON number as a float; None for anything else (booleans included), as peers send what they like."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def count_text(value: Any) -> str:
    """A count for a table cell: whole numbers without a point, '-' for no number."""
    number = as_number(value)
    if number is None:
        return "-"
    return f"{number:.0f}" if number == int(number) else f"{number:.1f}"


def _quoted(message: Any) -> str:
    return f'"{message}"' if isinstance(message, str) and message else ""


# ---------------------------------------------------------------------- remote tables


def machines_table(statuses: Sequence[Mapping[str, Any]], now: float) -> str:
    """One row per slot, factories in name order, slots in name order (§9)."""
    rows = []
    for status in sorted(statuses, key=lambda status: (str(status.get("factory")), str(status.get("machine")))):
        state = str(status.get("state") or "-")
        processors = status.get("num_processors", status.get("num_cpus"))
        model = status.get("machine_model")
        row = [
            short_name(status.get("machine")),
            str(status.get("machinetype") or "-")[:14],
            state,
            count_text(processors),
            MODEL_CLASSES.get(str(model), "??") if model else "",
        ]
        started, created = as_number(status.get("started_time")), as_number(status.get("created_time"))
        heartbeat, cpu_seconds = as_number(status.get("heartbeat_time")), as_number(status.get("cpu_seconds"))
        if state == "Running" and started:
            efficiency = ""
            if heartbeat and cpu_seconds is not None and heartbeat > started:
                efficiency = f"{100 * cpu_seconds / (heartbeat - started):.0f}%"
            recent = as_number(status.get("cpu_percentage"))
            row += [human_duration(now - started), efficiency, "" if recent is None else f"{recent:.0f}%"]
        elif state == "Starting" and created:
            row += [human_duration(now - created), "", ""]
        elif status.get("shutdown_message"):
            row.append(Span(_quoted(status.get("shutdown_message"))))
        rows.append(row)
    return format_table(["MACHINE", "MACHINETYPE", "STATE", "PROCS", "MODEL", "UP", "CPU", "NOW"], rows, right=(3, 5, 6, 7))


def machinetypes_table(statuses: Sequence[Mapping[str, Any]], machinetype: Optional[str] = None) -> str:
    """One row per factory and machinetype, with the last outcome the factory knows (§9)."""
    rows = []
    chosen = [status for status in statuses if machinetype is None or status.get("machinetype") == machinetype]
    for status in sorted(chosen, key=lambda status: (str(status.get("factory")), str(status.get("machinetype")))):
        hs06 = as_number(status.get("running_hs06"))
        row = [
            short_name(status.get("factory")),
            str(status.get("machinetype") or "-"),
            count_text(status.get("running_machines", status.get("total_machines"))),
            count_text(status.get("running_processors", status.get("running_cpus"))),
            "-" if hs06 is None else f"{hs06:.1f}",
        ]
        if status.get("shutdown_message"):
            row.append(f"{local_time(as_number(status.get('shutdown_time')))} {_quoted(status.get('shutdown_message'))}")
        rows.append(row)
    headers = ["FACTORY", "MACHINETYPE", "MACHINES", "PROCS", "HS06", "LAST OUTCOME"]
    return format_table(headers, rows, right=(2, 3, 4))


def factories_table(statuses: Sequence[Mapping[str, Any]]) -> str:
    """One row per factory that answered: usage against capacity, load, disk, memory (§9)."""
    rows = []
    for status in sorted(statuses, key=lambda status: str(status.get("factory"))):
        load = as_number(status.get("load_average"))
        version = str(status.get("daemon_version", status.get("vac_version")) or "-")
        words = version.split()
        rows.append(
            [
                short_name(status.get("factory")),
                f"{count_text(status.get('running_processors', status.get('running_cpus')))}"
                f"/{count_text(status.get('max_processors', status.get('total_cpus')))}",
                f"{count_text(status.get('running_machines'))}/{count_text(status.get('max_machines', status.get('total_machines')))}",
                "-" if load is None else f"{load:.2f}",
                human_kilobytes(as_number(status.get("root_disk_avail_kb"))),
                human_kilobytes(as_number(status.get("daemon_disk_avail_kb", status.get("vac_disk_avail_kb")))),
                f"{human_kilobytes(as_number(status.get('mem_used_kb')))}/{human_kilobytes(as_number(status.get('mem_total_kb')))}",
                words[1] if len(words) > 1 and words[0] == "Vac" else version,
            ]
        )
    headers = ["FACTORY", "PROCS", "MACHINES", "LOAD", "ROOT FREE", "VAC FREE", "MEMORY", "VERSION"]
    return format_table(headers, rows, right=(1, 2, 3, 4, 5, 6))


# ---------------------------------------------------------------------- status.json


def status_report(document: Mapping[str, Any], now: float) -> str:
    """`vac status`: this factory's last pass as status.json recorded it."""
    status_time = as_number(document.get("time"))
    census = document.get("census")
    lines = [
        f"{document.get('factory') or '-'} in space {document.get('space') or '-'}, "
        f"last pass {local_time(status_time, with_seconds=True)} "
        f"({human_duration(None if status_time is None else now - status_time)} ago)",
        f"Processors: {count_text(document.get('running_processors'))}/{count_text(document.get('total_processors'))} running"
        f"   Draining: {'yes' if document.get('draining') else 'no'}"
        f"   Gate: {document.get('gate') or 'none'}",
    ]
    if isinstance(census, Mapping):
        lines.append(
            f"Census: heard {count_text(census.get('heard'))} of {count_text(census.get('expected'))} factories"
            f" in {as_number(census.get('duration_seconds')) or 0.0:.2f}s"
        )
    guest_servers = document.get("guest_servers")
    if isinstance(guest_servers, Mapping):
        pids = [str(pid) for pid in guest_servers.get("pids") or ()]
        restarts = as_number(guest_servers.get("restarts")) or 0
        lines.append(
            f"Guest servers: {count_text(guest_servers.get('processes'))} processes, serving: "
            f"{' '.join(pids) if pids else 'none'}"
            f"   Restarts: {restarts:g}"
        )
    faults = [fault for fault in document.get("faults") or () if isinstance(fault, Mapping)]
    fault_kinds = {fault.get("kind") for fault in faults}
    for key, label, kind in (
        ("last_error", "Last error", None),
        ("config_error", "Configuration error", "config"),
        ("observe_error", "Observe error", "listing"),
    ):
        # A fault of the same kind says it with its since-time (issue 8 item 8); older keys otherwise.
        if document.get(key) and kind not in fault_kinds:
            lines.append(f"{label}: {str(document[key]).splitlines()[0]}")
    if "last_pass_completed" in document:
        completed = as_number(document.get("last_pass_completed"))
        if completed is None:
            lines.append("No pass has completed since vacd started")
        elif status_time is not None and completed < status_time:
            lines.append(
                f"No pass completed since {local_time(completed, with_seconds=True)} ({human_duration(now - completed)} ago)"
            )
    if faults:
        lines.append("Faults:")
        for fault in faults:
            message_lines = str(fault.get("message") or "").strip().splitlines() or [""]
            since = as_number(fault.get("since"))
            when = f" since {local_time(since, with_seconds=True)}" if since else ""
            lines.append(f"  {fault.get('kind') or '-'}{when}: {message_lines[0]}")
            lines += [f"    {line}" for line in message_lines[1:]]

    slot_rows = []
    for slot in document.get("slots") or ():
        state = str(slot.get("state") or "-")
        row = [
            count_text(slot.get("ordinal")),
            short_name(slot.get("name")),
            str(slot.get("machinetype") or "-"),
            state,
            count_text(slot.get("processors")),
        ]
        started, created = as_number(slot.get("started_time")), as_number(slot.get("created_time"))
        if state in ("Running", "Stopping", "Paused") and started:
            row += [human_duration(now - started), human_duration(as_number(slot.get("cpu_seconds")) or 0.0)]
        elif state == "Starting" and created:
            row += [human_duration(now - created), ""]
        elif slot.get("shutdown_message"):
            row.append(Span(_quoted(slot.get("shutdown_message"))))
        slot_rows.append(row)

    machinetype_rows, outcome_rows = [], []
    for name, values in sorted((document.get("machinetypes") or {}).items()):
        until = as_number(values.get("backoff_until"))
        in_force = until is not None and status_time is not None and until > status_time
        machinetype_rows.append(
            [
                name,
                f"{as_number(values.get('target_share')) or 0.0:g}",
                count_text(values.get("running_machines")),
                count_text(values.get("running_processors")),
                f"{as_number(values.get('running_hs06')) or 0.0:.1f}",
                local_time(until, with_seconds=True) if in_force else "-",
            ]
        )
        outcome = values.get("last_outcome")
        if isinstance(outcome, Mapping) and outcome.get("message"):
            outcome_rows.append(
                [name, local_time(as_number(outcome.get("time"))), short_name(outcome.get("machine")), _quoted(outcome.get("message"))]
            )

    heartbeat_rows = []
    for component, beat in sorted((document.get("heartbeats") or {}).items()):
        beat_time = as_number(beat)
        heartbeat_rows.append(
            [component, local_time(beat_time, with_seconds=True), human_duration(now - beat_time) if beat_time else "never"]
        )

    slot_error_rows = []
    for error in document.get("slot_errors") or ():
        if not isinstance(error, Mapping):
            continue
        slot_error_rows.append(
            [
                short_name(error.get("name")),
                str(error.get("step") or "-"),
                count_text(error.get("count")),
                local_time(as_number(error.get("since"))),
                local_time(as_number(error.get("retry_at"))),
                Span((str(error.get("error") or "").strip().splitlines() or [""])[0]),
            ]
        )

    sections = [
        "\n".join(lines) + "\n",
        format_table(["SLOT", "MACHINE", "MACHINETYPE", "STATE", "PROCS", "UP", "CPU"], slot_rows, right=(0, 4, 5, 6)),
    ]
    if slot_error_rows:
        sections.append(
            format_table(["SLOT ERROR", "STEP", "COUNT", "SINCE", "RETRY AT", "ERROR"], slot_error_rows, right=(2,))
        )
    sections += [
        format_table(
            ["MACHINETYPE", "SHARE", "MACHINES", "PROCS", "HS06", "BACKED OFF UNTIL"], machinetype_rows, right=(1, 2, 3, 4)
        ),
    ]
    if outcome_rows:
        sections.append(format_table(["LAST OUTCOME", "TIME", "MACHINE", "MESSAGE"], outcome_rows))
    sections.append(format_table(["COMPONENT", "LAST HEARTBEAT", "AGE"], heartbeat_rows, right=(2,)))
    return "\n".join(sections)
