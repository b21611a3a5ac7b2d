"""Real VacQuery responders on loopback addresses, served by an asyncio loop in a thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Optional

from tests.vacquery.sample_statuses import snapshot
from vacquery.messages import Snapshot
from vacquery.responder_transport import ResponderProtocol, start_responder


class LoopbackResponders:
    """Start responders with `start(...)`; `close()` stops them and the loop (use in a finally)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="responders", daemon=True)
        self._thread.start()
        self._transports: list[asyncio.DatagramTransport] = []

    def start(self, factory: str, host: str, port: int = 0, published: Optional[Snapshot] = None,
              **protocol_options: Any) -> tuple[ResponderProtocol, int]:
        protocol = ResponderProtocol(**protocol_options)
        protocol.publish(published if published is not None else snapshot(factory))
        transport = asyncio.run_coroutine_threadsafe(start_responder(host, port, protocol), self.loop).result(5)
        self._transports.append(transport)
        return protocol, int(transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        for transport in self._transports:
            self.loop.call_soon_threadsafe(transport.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
