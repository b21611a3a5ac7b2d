"""The dashboard: a read-only page of the whole space, served beside /metrics (issue 14).

`view` (pure) builds the /dashboard.json document from what the factory already knows;
`render` (pure) draws it as one HTML page; `history` keeps a day of samples in a bounded
ring file; `listing` asks the peers for machines and factories while someone looks;
`service` holds it together for vacd, and `pages` gives the metrics server its routes.
"""
