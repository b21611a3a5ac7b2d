"""The dashboard page: HTML drawn on the server from the /dashboard.json document.

Pure (issue 14 item 3): `render_page(document)` returns the whole page as text. It needs no
build step, loads nothing from elsewhere (no CDN, no font, no image: charts are inline SVG),
and reads on a phone (one column, tables scroll sideways).

Rules:
- Every value is escaped where it is put (`_e`): machinetype names, factory names, versions
  and shutdown messages come from peers and guests, and `<script>` must show as text.
- The one inline script and the one inline style are allowed by their SHA-256 in the
  Content-Security-Policy header (`content_security_policy`), and nothing else is: even
  markup that slipped past escaping could run no script and load nothing.
- The script only re-fetches this page when /dashboard-times.json says a newer pass or listing
  exists, swaps in the new <main>, and keeps the machines table's sort and filter (which
  `?filter=TEXT&sort=HEADING&order=desc` set at load, so a view can be bookmarked). With
  scripts off the page is complete; it just does not update itself.
"""

from __future__ import annotations

import base64
import hashlib
import html
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from vacquery.tables import as_number, count_text

# Seconds between the script's looks at /dashboard-times.json (the factory's pass is 30 s by default).
POLL_SECONDS = 5
# Colours for the machinetypes' lines, in order; more machinetypes reuse them.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;padding:0 .6em;color:#111;background:#fff;font-size:15px}
h1{font-size:1.25em;margin:.5em 0}h2{font-size:1.08em;margin:1.2em 0 .4em;border-bottom:1px solid #ccc}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.92em}
th,td{padding:.2em .55em;text-align:left;border-bottom:1px solid #eee;white-space:nowrap}
td.n,th.n{text-align:right}td.msg{white-space:normal;min-width:12em}
th[data-sort]{cursor:pointer;text-decoration:underline dotted}
.bad{color:#b00020;font-weight:600}.warn{color:#a15c00}.ok{color:#186a1e}.muted{color:#666}
.charts{display:flex;flex-wrap:wrap;gap:1em}.chart{flex:1 1 20em;max-width:36em}
.chart>svg{width:100%;height:auto;border:1px solid #ddd}.legend span{margin-right:.8em;white-space:nowrap}
input{font-size:1em;padding:.2em;max-width:100%}
"""

SCRIPT = """
(function(){
var POLL=%d*1000,seen=null,sortKey=null,sortDown=false;
function stamp(d){return [d.pass_time,d.listing_time,d.census_time].join(" ");}
function applyView(){
 var table=document.getElementById("machines");if(!table)return;
 var input=document.getElementById("machine-filter"),words=input?input.value.toLowerCase().trim():"";
 var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
 if(sortKey!==null){rows.sort(function(a,b){
  var x=a.cells[sortKey].getAttribute("data-v"),y=b.cells[sortKey].getAttribute("data-v");
  var nx=parseFloat(x),ny=parseFloat(y),c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:(x<y?-1:x>y?1:0);
  return sortDown?-c:c;});rows.forEach(function(r){body.appendChild(r);});}
 var shown=0;rows.forEach(function(r){var hit=!words||r.textContent.toLowerCase().indexOf(words)>=0;
  r.hidden=!hit;if(hit)shown++;});
 var count=document.getElementById("machine-count");if(count)count.textContent=shown+" of "+rows.length;
}
function wire(first){
 var input=document.getElementById("machine-filter");if(input)input.oninput=applyView;
 var heads=document.querySelectorAll("#machines th[data-sort]"),q=new URLSearchParams(location.search);
 Array.prototype.forEach.call(heads,function(th,i){th.onclick=function(){
  if(sortKey===i)sortDown=!sortDown;else{sortKey=i;sortDown=false;}applyView();};
  if(first&&th.textContent.toLowerCase()===(q.get("sort")||"").toLowerCase()){sortKey=i;sortDown=q.get("order")==="desc";}});
 if(first&&input&&q.get("filter"))input.value=q.get("filter");
 applyView();
}
function refresh(){
 fetch("dashboard",{cache:"no-store"}).then(function(r){return r.text();}).then(function(text){
  var fresh=new DOMParser().parseFromString(text,"text/html").querySelector("main");
  var input=document.getElementById("machine-filter"),words=input?input.value:"";
  if(fresh){document.querySelector("main").replaceWith(fresh);}
  input=document.getElementById("machine-filter");if(input)input.value=words;wire(false);
  live("updated");
 });
}
function live(what){var e=document.getElementById("live");
 if(e)e.textContent="Live: "+what+" "+new Date().toLocaleTimeString()+".";}
function poll(){
 fetch("dashboard-times.json",{cache:"no-store"}).then(function(r){return r.json();}).then(function(d){
  var s=stamp(d);if(seen!==null&&s!==seen)refresh();else live("checked");seen=s;
 }).catch(function(){live("cannot reach vacd, retrying; last");}).then(function(){setTimeout(poll,POLL);});
}
wire(true);poll();
})();
""" % POLL_SECONDS


def _digest(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def content_security_policy() -> str:
    """The header that lets only this page's own script and style run, and fetch only from here."""
    return (f"default-src 'none'; script-src '{_digest(SCRIPT)}'; style-src '{_digest(STYLE)}'; "
            "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _e(value: Any) -> str:
    """Escaped text of a value for HTML content or a quoted attribute; '-' for None."""
    return html.escape("-" if value is None else str(value), quote=True)


def _when(epoch_seconds: Any) -> str:
    number = as_number(epoch_seconds)
    return "-" if not number else datetime.fromtimestamp(number, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _age(now: float, epoch_seconds: Any) -> str:
    number = as_number(epoch_seconds)
    return "never" if not number else _duration(now - number)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _cell(value: Any, sort_value: Any = None, numeric: bool = False, css: str = "") -> str:
    classes = " ".join(part for part in ("n" if numeric else "", css) if part)
    class_attribute = f' class="{classes}"' if classes else ""
    key = value if sort_value is None else sort_value
    return f'<td{class_attribute} data-v="{_e("" if key is None else key)}">{_e(value)}</td>'


def _table(table_id: str, headers: Sequence[tuple[str, bool]], rows: Iterable[str], sortable: bool = False) -> str:
    head = "".join(
        f'<th{" class=n" if numeric else ""}{" data-sort" if sortable else ""} scope="col">{_e(name)}</th>'
        for name, numeric in headers
    )
    body = "".join(rows)
    return (f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _factories_section(document: Mapping[str, Any]) -> str:
    rows = []
    for factory in document.get("factories") or ():
        state = str(factory.get("state"))
        label = state
        if state == "up" and factory.get("draining"):
            label = "up, draining"
        elif state == "up" and factory.get("full"):
            label = "up, full"
        css = {"up": "ok", "silent": "bad", "limited": "warn"}.get(state, "")
        draining = factory.get("draining")
        rows.append(
            f'<tr data-factory="{_e(factory.get("name"))}">' + _cell(factory.get("name"))
            + _cell(label, css=css)
            + _cell(f"{count_text(factory.get('running_processors'))}/{count_text(factory.get('max_processors'))}",
                    factory.get("running_processors"), numeric=True)
            + _cell(count_text(factory.get("running_machines")), factory.get("running_machines"), numeric=True)
            + _cell("-" if factory.get("load_average") is None else f"{factory['load_average']:.2f}", numeric=True)
            + _cell("unknown" if draining is None else ("yes" if draining else "no"))
            + _cell(factory.get("version")) + "</tr>"
        )
    headers = [("factory", False), ("state", False), ("processors", True), ("machines", True), ("load", True),
               ("draining", False), ("version", False)]
    return "<h2>Factories</h2>" + _table("factories", headers, rows)


def _machinetypes_section(document: Mapping[str, Any]) -> str:
    rows = []
    for row in document.get("machinetypes") or ():
        target, achieved = as_number(row.get("target_share")) or 0.0, as_number(row.get("achieved_share")) or 0.0
        bars = _bar_svg(target, "#999") + _bar_svg(achieved, "#1f77b4")
        until = row.get("backoff_until")
        rows.append(
            f'<tr data-machinetype="{_e(row.get("name"))}">' + _cell(row.get("name"))
            + f'<td class="n" data-v="{target:.4f}">{100 * target:.1f}%</td>'
            + f'<td class="n" data-v="{achieved:.4f}">{100 * achieved:.1f}%</td>'
            + f"<td>{bars}</td>"
            + _cell(count_text(row.get("running_processors")), row.get("running_processors"), numeric=True)
            + _cell(count_text(row.get("running_machines")), row.get("running_machines"), numeric=True)
            + _cell(_when(until) if until else "-", css="warn" if until else "") + "</tr>"
        )
    headers = [("machinetype", False), ("target", True), ("actual", True), ("target (grey) / actual (blue)", False),
               ("processors", True), ("machines", True), ("backed off until", False)]
    error = as_number(document.get("share_error")) or 0.0
    now = as_number(document.get("time")) or 0.0
    heard = document.get("machinetypes_heard_time")
    source = f"peers heard {_age(now, heard)} ago" if heard else "no peer heard yet"
    return (f"<h2>Machinetypes</h2><p>Share error across the space: <b>{100 * error:.1f}%</b> "
            f"(half the summed distance between target and actual HS06 shares; {_e(source)})</p>"
            + _table("machinetypes", headers, rows))


def _bar_svg(fraction: float, colour: str) -> str:
    """A share as a 100-unit bar (SVG, so the CSP needs no inline style attributes)."""
    width = max(0.0, min(1.0, fraction)) * 100
    return (f'<svg class="share" viewBox="0 0 100 6" width="160" height="10" role="img" aria-label="{width:.1f}%">'
            f'<rect width="100" height="6" fill="#eee"/><rect width="{width:.2f}" height="6" fill="{colour}"/></svg><br>')


def _backoffs_section(document: Mapping[str, Any], now: float) -> str:
    backoffs = document.get("backoffs") or ()
    if not backoffs:
        return "<h2>Back-offs</h2><p>No machinetype is backed off.</p>"
    rows = [
        "<tr>" + _cell(backoff.get("machinetype")) + _cell(_when(backoff.get("until")))
        + _cell(_duration((as_number(backoff.get("until")) or now) - now))
        + f'<td class="msg">{_e(backoff.get("reason"))}</td>'
        + _cell(backoff.get("factory")) + _cell(_when(backoff.get("time"))) + "</tr>"
        for backoff in backoffs
    ]
    headers = [("machinetype", False), ("until", False), ("ends in", False), ("reason", False), ("heard from", False),
               ("at", False)]
    return "<h2>Back-offs</h2>" + _table("backoffs", headers, rows)


def _outcomes_section(document: Mapping[str, Any]) -> str:
    outcomes = document.get("outcomes") or ()
    if not outcomes:
        return "<h2>Recent outcomes</h2><p>No slot in the space shows an outcome yet.</p>"
    rows = []
    for outcome in outcomes:
        code = str(outcome.get("code"))
        css = "bad" if code.isdigit() and int(code) >= 300 else ""
        rows.append(
            f'<tr data-code="{_e(code)}">' + _cell(code, css=css) + _cell(count_text(outcome.get("count")), outcome.get("count"), True)
            + _cell(", ".join(outcome.get("machinetypes") or ()))
            + f'<td class="msg">{_e(outcome.get("last_message"))}</td>' + _cell(_when(outcome.get("last_time"))) + "</tr>"
        )
    headers = [("code", False), ("slots", True), ("machinetypes", False), ("latest message", False), ("at", False)]
    return ("<h2>Recent outcomes</h2><p class=muted>The last machine of every slot in the space, by shutdown code.</p>"
            + _table("outcomes", headers, rows))


def _machines_section(document: Mapping[str, Any], now: float) -> str:
    rows = []
    for machine in document.get("machines") or ():
        state = str(machine.get("state") or "-")
        started = as_number(machine.get("started_time"))
        up = now - started if state == "Running" and started else None
        processors = machine.get("num_processors", machine.get("num_cpus"))  # wire names (vacquery.codec)
        cpu = as_number(machine.get("cpu_percentage"))
        rows.append(
            f'<tr data-machine="{_e(machine.get("machine"))}">'
            + _cell(machine.get("factory")) + _cell(machine.get("machine")) + _cell(machine.get("machinetype"))
            + _cell(state, css="ok" if state == "Running" else "")
            + _cell(count_text(processors), processors, numeric=True)
            + _cell("" if up is None else _age(now, started), up, numeric=True)
            + _cell("" if cpu is None else f"{cpu:.0f}%", cpu, numeric=True)
            + f'<td class="msg" data-v="{_e(machine.get("shutdown_message") or "")}">'
            f'{_e(machine.get("shutdown_message") or "")}</td></tr>'
        )
    headers = [("factory", False), ("machine", False), ("machinetype", False), ("state", False), ("procs", True),
               ("up", True), ("cpu now", True), ("shutdown message", False)]
    listing = document.get("listing_time")
    heard = f"listed {_age(now, listing)} ago" if listing else "this factory only: the space's listing has not come yet"
    return (f"<h2>Machines</h2><p class=muted>As <code>vac machines</code> shows them ({_e(heard)}); "
            'click a heading to sort. <label>Filter <input id="machine-filter" type="search" '
            f'placeholder="factory, machinetype, state..."></label> <span id="machine-count">{len(rows)}</span></p>'
            + _table("machines", headers, rows, sortable=True))


def _this_factory_section(document: Mapping[str, Any], now: float) -> str:
    this = document.get("this_factory") or {}
    parts = [f"<h2>This factory: {_e(this.get('name'))}</h2><ul>"]
    parts.append(f"<li>Processors: {_e(count_text(this.get('running_processors')))}/{_e(count_text(this.get('total_processors')))} "
                 f"running; draining: {'yes' if this.get('draining') else 'no'}</li>")
    parts.append(f"<li>Gate: {_e(this.get('gate') or 'none')}</li>")
    census = this.get("census")
    if isinstance(census, Mapping):
        silent = ", ".join(str(name) for name in census.get("silent") or ()) or "none"
        parts.append(f"<li>Last census: heard {_e(count_text(census.get('heard')))} of {_e(count_text(census.get('expected')))} "
                     f"factories in {_e(census.get('duration_seconds'))}s; silent: {_e(silent)}</li>")
    completed = this.get("last_pass_completed")
    parts.append(f"<li>Last completed pass: {_e(_when(completed))} ({_e(_age(now, completed))} ago)</li>")
    for key, label in (("last_error", "Last creation error"), ("config_error", "Configuration error")):
        if this.get(key):
            parts.append(f'<li class="bad">{label}: {_e(this.get(key))}</li>')
    parts.append("</ul>")
    for fault in this.get("faults") or ():
        parts.append(f'<p class="bad">Fault {_e(fault.get("kind"))} since {_e(_when(fault.get("since")))}: '
                     f'{_e(fault.get("message"))}</p>')
    beats = [
        "<tr>" + _cell(component) + _cell(_when(beat.get("time")))
        + _cell(_age(now, beat.get("time")), beat.get("age_seconds"), True,
                "bad" if (beat.get("age_seconds") or 0) > 300 else "") + "</tr>"
        for component, beat in (this.get("heartbeats") or {}).items()
    ]
    parts.append(_table("heartbeats", [("part", False), ("last heartbeat", False), ("age", True)], beats))
    slots = [
        "<tr>" + _cell(slot.get("ordinal"), numeric=True) + _cell(slot.get("name")) + _cell(slot.get("machinetype"))
        + _cell(slot.get("state")) + _cell(count_text(slot.get("processors")), slot.get("processors"), True)
        + f'<td class="msg">{_e(slot.get("shutdown_message") or slot.get("note") or "")}</td></tr>'
        for slot in this.get("slots") or ()
    ]
    parts.append("<h3>Slots</h3>" + _table("slots", [("slot", True), ("machine", False), ("machinetype", False),
                                                     ("state", False), ("procs", True), ("message or note", False)], slots))
    errors = this.get("slot_errors") or ()
    if errors:
        rows = [
            "<tr>" + _cell(error.get("name")) + _cell(error.get("step")) + _cell(error.get("count"), numeric=True)
            + _cell(_when(error.get("since"))) + _cell(_when(error.get("retry_at")))
            + f'<td class="msg">{_e(error.get("error"))}</td></tr>'
            for error in errors
        ]
        parts.append("<h3>Slot errors</h3>" + _table("slot-errors", [("machine", False), ("step", False),
                                                                     ("count", True), ("since", False),
                                                                     ("retry at", False), ("error", False)], rows))
    return "".join(parts)


# ------------------------------------------------------------------ history charts

CHART_WIDTH, CHART_HEIGHT, CHART_MARGIN = 360, 120, 24
BUCKETS = 24


def _polyline(points: Sequence[tuple[float, float]], start: float, end: float, top: float, colour: str) -> str:
    if not points:
        return ""
    if len(points) == 1:
        points = [(points[0][0] - 60, points[0][1]), points[0]]  # one sample: a short dash, not nothing
    span = max(1.0, end - start)
    plot_width, plot_height = CHART_WIDTH - CHART_MARGIN - 4, CHART_HEIGHT - 2 * 10
    coordinates = " ".join(
        f"{CHART_MARGIN + (when - start) / span * plot_width:.1f},{10 + plot_height - (value / top if top else 0) * plot_height:.1f}"
        for when, value in points
    )
    return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coordinates}"/>'


def _frame(title: str, top: float, unit: str, body: str, legend: str = "") -> str:
    axis = (f'<text x="2" y="14" font-size="9">{_e(f"{top:g}{unit}")}</text>'
            f'<text x="2" y="{CHART_HEIGHT - 4}" font-size="9">0</text>'
            f'<line x1="{CHART_MARGIN}" y1="{CHART_HEIGHT - 10}" x2="{CHART_WIDTH - 4}" y2="{CHART_HEIGHT - 10}" stroke="#ccc"/>')
    return (f'<div class="chart"><b>{_e(title)}</b><svg viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
            f'aria-label="{_e(title)}">{axis}{body}</svg><div class="legend">{legend}</div></div>')


def _history_section(document: Mapping[str, Any], now: float) -> str:
    samples = [sample for sample in (document.get("history") or {}).get("samples") or () if isinstance(sample, Mapping)]
    day_ago = now - 86400
    samples = [sample for sample in samples if (as_number(sample.get("time")) or 0) >= day_ago]
    if not samples:
        return "<h2>Last day</h2><p>No history yet: vacd keeps one sample a minute.</p>"
    # The x axis spans the day, or less while vacd has kept less: a young history is readable.
    start = max(day_ago, min(float(sample["time"]) for sample in samples) - 60)
    names = sorted({name for sample in samples for name in (sample.get("processors") or {})})
    top = max([1.0] + [float(value) for sample in samples for value in (sample.get("processors") or {}).values()])
    lines, legend = [], []
    for index, name in enumerate(names):
        colour = PALETTE[index % len(PALETTE)]
        points = [(float(sample["time"]), float((sample.get("processors") or {}).get(name, 0.0))) for sample in samples]
        lines.append(_polyline(points, start, now, top, colour))
        legend.append(f'<span><svg width="10" height="10"><rect width="10" height="10" fill="{colour}"/></svg> {_e(name)}</span>')
    charts = [_frame("Running processors by machinetype (space)", top, "", "".join(lines), "".join(legend))]
    share_points = [(float(sample["time"]), float(sample.get("share_error") or 0.0)) for sample in samples]
    charts.append(_frame("Share error (space)", 1.0, "", _polyline(share_points, start, now, 1.0, PALETTE[3])))
    census_points = [(float(sample["time"]), float(sample.get("census_completeness") or 0.0)) for sample in samples]
    charts.append(_frame("Census completeness", 1.0, "", _polyline(census_points, start, now, 1.0, PALETTE[2])))
    # 24 bars over the span: an hour each over a whole day.
    bucket_seconds = max(60.0, (now - start) / BUCKETS)
    buckets: dict[int, dict[str, float]] = {}
    for sample in samples:
        index = min(BUCKETS - 1, int((float(sample["time"]) - start) // bucket_seconds))
        bucket = buckets.setdefault(index, {"creations": 0.0, "outcomes": 0.0, "aborts": 0.0})
        bucket["creations"] += float(sample.get("creations") or 0)
        for code, count in (sample.get("outcomes") or {}).items():
            bucket["outcomes"] += float(count)
            if str(code).isdigit() and int(code) >= 300:
                bucket["aborts"] += float(count)
    peak = max([1.0] + [value for bucket in buckets.values() for value in bucket.values()])
    bars = []
    plot_width, plot_height = CHART_WIDTH - CHART_MARGIN - 4, CHART_HEIGHT - 20
    for index, bucket in sorted(buckets.items()):
        for offset, (key, colour) in enumerate((("creations", PALETTE[0]), ("outcomes", PALETTE[2]), ("aborts", PALETTE[3]))):
            height = bucket[key] / peak * plot_height
            x = CHART_MARGIN + index / BUCKETS * plot_width + offset * 4
            bars.append(f'<rect x="{x:.1f}" y="{10 + plot_height - height:.1f}" width="4" height="{height:.1f}" fill="{colour}">'
                        f"<title>{_e(key)}: {bucket[key]:.0f}</title></rect>")
    bar_legend = "".join(
        f'<span><svg width="10" height="10"><rect width="10" height="10" fill="{colour}"/></svg> {label}</span>'
        for label, colour in (("creations", PALETTE[0]), ("outcomes", PALETTE[2]), ("of which 300 or more", PALETTE[3]))
    )
    charts.append(_frame(f"This factory per {_duration(bucket_seconds)}", peak, "", "".join(bars), bar_legend))
    span = f"since {_when(start)}" if start > day_ago else "the last 24h"
    return (f'<h2>Last day</h2><p class=muted>Kept by this vacd, one sample a minute; {_e(span)} (docs/dashboard.md).</p>'
            f'<div class="charts">{"".join(charts)}</div>')


def render_page(document: Mapping[str, Any]) -> str:
    """The whole page for one /dashboard.json document."""
    now = as_number(document.get("time")) or 0.0
    title = f"vac space {document.get('space') or '-'} from {document.get('factory') or '-'}"
    machines = document.get("machines") or ()
    running = sum(1 for machine in machines if machine.get("state") == "Running")
    summary = (f"{_e(_when(now))}; pass {_e(_age(now, document.get('pass_time')))} ago; "
               f"{len(document.get('factories') or ())} factories, {running} of {len(machines)} slots running")
    main = "".join((
        f"<main><h1>{_e(title)}</h1><p class=muted>{summary}</p>",
        _factories_section(document),
        _machinetypes_section(document),
        _backoffs_section(document, now),
        _outcomes_section(document),
        _history_section(document, now),
        _machines_section(document, now),
        _this_factory_section(document, now),
        "</main>",
    ))
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>{main}"
            '<footer class=muted><p><span id="live">Not updating by itself (scripts are off).</span> '
            'Read-only. Machine-readable: <a href="dashboard.json">dashboard.json</a>, '
            f'<a href="metrics">metrics</a>.</p></footer><script>{SCRIPT}</script></body></html>\n')
