"""The hooks a running vacd gives its factory: what the factory's passes do beyond the store and the backend.

Rules (design.md rule 6; issue 9 item 1):
- Each hook is one of vacd's own parts wired in: contextualisation of the machine
  directory (vacd.guestapi.contextualise), APEL accounting (vacd.accounting), the image
  cache, each image stamped as used when fetched (vacd.imageeviction), QEMU's access
  check of the files a machine opens (issue 8 item 12), and the logical volume removed
  when a machine is finalised (§1.7).
- The counting of creations and their phases (metrics, dashboard) is the Daemon's, passed in.
- GuestObservations installs the heartbeat-file and outcome times and the lowered MJF
  shutdown times: the one collaborator the simulator and the tests wire too.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from vacd.config import Machinetype, Settings
from vacd.creationphases import PhaseObserver
from vacd.factory import FactoryHooks
from vacd.imagecache import ImageCache
from vacd.paths import Paths
from vacd.records import MachineRecord
from vacd.store import Store

# (record, seconds, ok) of each creation that ended.
CreationObserver = Callable[[Any, float, bool], None]


def daemon_hooks(
    paths: Paths, count_creation: CreationObserver, creation_phase: PhaseObserver
) -> tuple[FactoryHooks, ImageCache]:
    """The hooks, and the image cache they fetch into (the Daemon evicts from it)."""
    from vacd.accounting import write_apel_record
    from vacd.imageeviction import mark_image_used
    from vacd.guestapi.contextualise import prepare_machine_dir
    from vacd.lvm import LogicalVolumes
    from vacd.observations import GuestObservations
    from vacd.qemuaccess import check_readable_by_qemu, host_qemu_identity

    def contextualise(settings: Settings, machinetype: Machinetype, record: MachineRecord, now: int) -> None:
        prepare_machine_dir(paths, settings, machinetype, record, Store(paths).machine_dir(record), now=now)

    def account(settings: Settings, machinetype: Optional[Machinetype], record: Any, finish: Any) -> None:
        write_apel_record(paths, settings, machinetype, record, finish)

    images = ImageCache(paths)

    def fetch_image(url: str) -> Path:
        """The cached image, stamped as used now for the eviction rule (vacd/imageeviction.py)."""
        path = images.fetch(url)
        mark_image_used(path, time.time())
        return path

    def prefetch_images(urls: Sequence[str], public_only: bool) -> "Future[dict[str, Path]]":
        """Downloads on the image pool; each image is stamped as used when it is there."""
        downloads = images.prefetch(urls, public_only=public_only)

        def stamp(done: "Future[dict[str, Path]]") -> None:
            if not done.cancelled() and done.exception() is None:
                for path in done.result().values():
                    mark_image_used(path, time.time())

        downloads.add_done_callback(stamp)
        return downloads

    # Who QEMU runs as is read once: machine_spec checks each file against it under
    # qemu:///system (issue 8 item 12).
    qemu_identity = host_qemu_identity()

    def qemu_access(path: Path) -> None:
        if qemu_identity is not None:
            check_readable_by_qemu(path, qemu_identity)

    logical_volumes = LogicalVolumes()

    def remove_volume(settings: Settings, machinetype: Any, record: Any, finish: Any) -> None:
        # Vac 03 removed a machine's logical volume when it ended (§1.7). Finalising runs
        # once the machine is gone and before its slot is free, so the volume is closed
        # and no new machine of the slot can have made one yet. A failure is logged by
        # the factory; the slot's next creation removes the volume before making its own.
        if settings.volume_group is not None:
            logical_volumes.remove(settings.volume_group, record.name)

    # Heartbeat-file and outcome times, and lowered MJF shutdown times: the one collaborator
    # the simulator and the tests wire too (issue 9 item 1).
    hooks = GuestObservations().install(FactoryHooks(
        fetch_image=fetch_image,
        prefetch_images=prefetch_images,
        qemu_access=qemu_access,
        account=account,
        on_created=[count_creation],
        creation_phase=creation_phase,
        on_finished=[remove_volume],
        contextualise=contextualise,
    ))
    return hooks, images
