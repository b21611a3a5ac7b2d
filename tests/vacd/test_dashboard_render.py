"""The dashboard page: every outside string escaped, one script allowed by its hash, readable without it."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from typing import Any, Optional

from hypothesis import given, settings, strategies as st

from tests.vacd.dashboard_samples import NOW, factory, machine, machinetype, status_document
from vacd.dashboard.history import Sample
from vacd.dashboard.render import SCRIPT, STYLE, content_security_policy, render_page
from vacd.dashboard.view import Heard, PassFacts, space_view
from vacquery.messages import MachineState

F1, F2 = "f1.example.com", "f2.example.com"
HOSTILE = "<script>alert('x')</script>\"'&<img src=x onerror=alert(1)>"


class Elements(HTMLParser):
    """Every start tag, and all text outside <script> and <style>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, Optional[str]]]] = []
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def page_with(name: str, message: str, version: str = "Vac 4.0.0") -> str:
    own = (machine(F1, 0, "lhcb", MachineState.RUNNING), machinetype(F1, "lhcb", 10.0, 1.0), factory(F1, 1, 2))
    census = Heard(NOW, (machinetype(F2, name, 10.0, 1.0, message=message, message_time=NOW - 5),), asked=(F2,))
    listing = Heard(NOW, (machine(F2, 0, name, MachineState.SHUT_DOWN, message=message), factory(F2, 0, 1)),
                    asked=(F2,))
    status = status_document(machinetypes={name: {"target_share": 1.0, "backoff_until": NOW + 60}},
                             last_error=message, slot_errors=[{"name": name, "step": "create", "error": message}])
    document: dict[str, Any] = space_view(PassFacts(NOW, status, own, census), listing,
                                          [Sample(0, NOW - 60, {name: 1.0}, 0.5, 1.0, outcomes={"300": 1})], NOW)
    document["factories"][1]["version"] = version
    return render_page(document)


def test_hostile_names_and_messages_show_as_text_and_add_no_element() -> None:
    page = page_with(HOSTILE, "300 " + HOSTILE, version=HOSTILE)
    parsed = Elements()
    parsed.feed(page)
    assert [tag for tag, _ in parsed.tags].count("script") == 1
    assert "img" not in [tag for tag, _ in parsed.tags]
    assert not any(name.startswith("on") for _, attributes in parsed.tags for name in attributes)
    text = "".join(parsed.text)
    assert text.count(HOSTILE) >= 6  # machinetype rows, back-off, outcomes, machines, legend, errors, version
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40))
def test_any_machinetype_name_and_message_leave_the_page_with_one_script(name: str) -> None:
    page = page_with(name, f"300 {name}", version=name)
    parsed = Elements()
    parsed.feed(page)
    assert [tag for tag, _ in parsed.tags].count("script") == 1
    assert page.count("</script>") == 1


def test_the_policy_allows_exactly_the_page_script_and_style_by_hash() -> None:
    policy = content_security_policy()
    for inline in (SCRIPT, STYLE):
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy
    page = page_with("lhcb", "200 Success")
    assert f"<script>{SCRIPT}</script>" in page and f"<style>{STYLE}</style>" in page


def test_the_page_needs_nothing_from_elsewhere() -> None:
    page = page_with("lhcb", "200 Success")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    assert '<meta name="viewport" content="width=device-width,initial-scale=1">' in page


def test_the_machines_table_has_one_row_per_slot_with_sortable_headings() -> None:
    page = page_with("lhcb", "300 No more work")
    parsed = Elements()
    parsed.feed(page)
    rows = [attributes["data-machine"] for tag, attributes in parsed.tags if tag == "tr" and "data-machine" in attributes]
    assert rows == ["f1-00.example.com", "f2-00.example.com"]
    assert sum(1 for tag, attributes in parsed.tags if tag == "th" and "data-sort" in attributes) == 8
    assert ("input", {"id": "machine-filter", "type": "search", "placeholder": "factory, machinetype, state..."}) \
        in parsed.tags


def test_history_charts_are_inline_svg_with_a_line_per_machinetype() -> None:
    page = page_with("lhcb", "200 Success")
    assert page.count("<polyline") == 3  # lhcb's processors, share error, census completeness
    assert "Running processors by machinetype (space)" in page and "This factory per " in page


def test_a_page_without_history_or_peers_says_so() -> None:
    document = space_view(PassFacts(NOW, status_document()), None, [], NOW)
    page = render_page(document)
    assert "No history yet" in page and "the space&#x27;s listing has not come yet" in page
