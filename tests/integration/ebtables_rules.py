"""The ebtables reading the real-VM tests and benches use: vacd's own (vacd.backends.cleantraffic)."""

from __future__ import annotations

from vacd.backends.cleantraffic import chains_naming, clean_traffic_problems, read_nat_chains as nat_chains

__all__ = ["chains_naming", "clean_traffic_problems", "nat_chains"]
