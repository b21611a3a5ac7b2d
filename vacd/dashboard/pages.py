"""The dashboard's routes on the metrics server: `/dashboard` (HTML), `/dashboard.json` and
`/dashboard-times.json` (the few bytes the page's script polls: a full document with a
day of history is hundreds of KiB, docs/benchmarks.md).

Both are read-only and send no cookies, keys or configuration (the document holds what
`vac status` and `vac machines` show). The HTML carries the Content-Security-Policy of
render.py; both say `no-store` so a proxy never serves a stale space.
"""

from __future__ import annotations

import json
from typing import Optional

from vacd.dashboard.render import content_security_policy
from vacd.dashboard.service import Dashboard
from vacd.metrics import Page, PageSource

COMMON_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


def dashboard_pages(dashboard: Dashboard) -> dict[str, PageSource]:
    """The paths the metrics server adds for `dashboard`."""

    def html_page() -> Optional[Page]:
        text = dashboard.page()
        if text is None:
            return None
        headers = COMMON_HEADERS + (("Content-Security-Policy", content_security_policy()),)
        return Page("text/html; charset=utf-8", text.encode(), headers)

    def json_page() -> Optional[Page]:
        document = dashboard.document()
        if document is None:
            return None
        return Page("application/json", (json.dumps(document, indent=1, sort_keys=True) + "\n").encode(), COMMON_HEADERS)

    def times_page() -> Optional[Page]:
        times = dashboard.times()
        if times is None:
            return None
        return Page("application/json", (json.dumps(times, sort_keys=True) + "\n").encode(), COMMON_HEADERS)

    return {"/dashboard": html_page, "/dashboard.json": json_page, "/dashboard-times.json": times_page}
