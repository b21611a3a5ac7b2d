"""Benchmark: what session tokens add to the metadata server's own request path.

GuestApiServer.on_head (parse result in, Response out: identity, token check, route) is
timed in-process, without sockets, for 64 machines made by bench/metadata_service.py's
make_site, so the figure is the server's CPU per request with warm caches; sockets and
asyncio add about 30 to 100 µs more per request on top of every row alike (docs/benchmarks.md,
"Guest metadata service"). Rows, each as µs per request and as a ratio to the first:

- cloud-init's `GET /openstack/latest/meta_data.json`, `metadata_tokens = optional` (the
  path every guest takes; the baseline);
- the same with `metadata_tokens = required` (a cloud-init path: the token table only);
- Vac's `GET /latest/meta-data.json`, optional, no token;
- the same, required, with a valid token (the HMAC check);
- the same, required, with a token of another slot (refused, 401);
- `PUT /latest/api/token` (a token issued).

    .venv/bin/python bench/metadata_tokens.py --requests 200000 --rounds 10
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from metadata_load import SLOTS  # noqa: E402
from metadata_service import make_site, source_to_ordinal  # noqa: E402
from vacd.config import Settings  # noqa: E402
from vacd.guestapi.server import GuestApiServer  # noqa: E402
from vacd.guestapi.wire import parse_head  # noqa: E402
from vacd.paths import Paths  # noqa: E402
from vacd.store import Store  # noqa: E402


def head(method: str, path: str, extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n{extra}\r\n".encode()


def per_request_microseconds(server: GuestApiServer, raw_heads: list[bytes], expected: int, requests: int) -> float:
    heads = [parse_head(raw) for raw in raw_heads]
    sources = [f"127.0.0.{ordinal}" for ordinal in range(1, SLOTS + 1)]
    for source, parsed in zip(sources, heads):  # warm the caches, and check the answer
        status = server.on_head("metadata", source, parsed).status  # type: ignore[union-attr]
        assert status == expected, (status, expected)
    started = time.perf_counter()
    for index in range(requests):
        slot = index % SLOTS
        server.on_head("metadata", sources[slot], heads[slot])
    return (time.perf_counter() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000, help="requests timed per row, over all rounds")
    parser.add_argument("--rounds", type=int, default=10)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vac-bench-tokens-") as prefix:
        paths, settings = make_site(Path(prefix))
        current: list[Settings] = [settings]
        server = GuestApiServer(Paths(Path(prefix)), Store(paths), lambda: current[0], metadata_addresses=(),
                                mjf_addresses=(), source_to_ordinal=source_to_ordinal)
        optional = dataclasses.replace(settings, metadata_tokens="optional")
        required = dataclasses.replace(settings, metadata_tokens="required")

        def tokens_for(slot_shift: int) -> list[bytes]:
            raw_heads = []
            for ordinal in range(1, SLOTS + 1):
                issued = server.on_head("metadata", f"127.0.0.{(ordinal - 1 + slot_shift) % SLOTS + 1}",
                                        parse_head(head("PUT", "/latest/api/token",
                                                        "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n")))
                token = issued.body.decode()  # type: ignore[union-attr]
                raw_heads.append(head("GET", "/latest/meta-data.json", f"X-aws-ec2-metadata-token: {token}\r\n"))
            return raw_heads

        cloud_init = [head("GET", "/openstack/latest/meta_data.json")] * SLOTS
        vac_path = [head("GET", "/latest/meta-data.json")] * SLOTS
        put = [head("PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n")] * SLOTS
        rows: list[tuple[str, Settings, Callable[[], list[bytes]], int]] = [
            ("cloud-init path, optional (baseline)", optional, lambda: cloud_init, 200),
            ("cloud-init path, required", required, lambda: cloud_init, 200),
            ("Vac path, optional, no token", optional, lambda: vac_path, 200),
            ("Vac path, required, valid token", required, lambda: tokens_for(0), 200),
            ("Vac path, required, another slot's token", required, lambda: tokens_for(1), 401),
            ("PUT /latest/api/token", required, lambda: put, 200),
        ]
        heads = []
        for _name, row_settings, make_heads, _expected in rows:
            current[0] = row_settings
            heads.append(make_heads())
        # Rows interleaved, `--rounds` times; each row's best round is kept, since a shared
        # host's other tenants only ever add time.
        best = [float("inf")] * len(rows)
        for _round in range(arguments.rounds):
            for index, (_name, row_settings, _make_heads, expected) in enumerate(rows):
                current[0] = row_settings
                microseconds = per_request_microseconds(server, heads[index], expected,
                                                        arguments.requests // arguments.rounds)
                best[index] = min(best[index], microseconds)
        print("| request | µs/request | ratio |")
        print("|---|---:|---:|")
        for (name, _settings, _make_heads, _expected), microseconds in zip(rows, best):
            print(f"| {name} | {microseconds:.2f} | {microseconds / best[0]:.2f} |")


if __name__ == "__main__":
    main()
