"""A Store SCP standing in for the PACS: it keeps every instance it receives in a folder."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.transport import ThreadedAssociationServer

DESTINATION_AE = "DEMO_PACS"


class Destination:
    """Accepts any storage SOP class and writes what it receives to `folder` as
    `<SOPInstanceUID>.dcm`."""

    def __init__(
        self, folder: Path, *, ae_title: str = DESTINATION_AE, host: str = "127.0.0.1"
    ) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.host = host
        self.port = free_port(host)
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> Destination:
        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def _store(self, event: Any) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        dataset.save_as(self.folder / f"{dataset.SOPInstanceUID}.dcm", enforce_file_format=True)
        return 0x0000


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
