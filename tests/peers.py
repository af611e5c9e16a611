"""Real DICOM destinations for the delivery tests: dcmtk's storescp and a pynetdicom SCP."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from tests.helpers import free_port


class Storescp:
    """dcmtk's storescp writing every received instance to `folder`."""

    def __init__(
        self,
        folder: Path,
        port: int | None = None,
        ae_title: str = "DEST",
        options: tuple[str, ...] = (),
    ) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.ae_title = ae_title
        self.options = options  # more storescp options, e.g. ("+uf",): a file per C-STORE
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Storescp:
        self.folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TCP_NODELAY="1")
        command = ["storescp", "--aetitle", self.ae_title, *self.options, "-od", str(self.folder)]
        command.append(str(self.port))
        self._process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


class RecordingSCP:
    """A pynetdicom Store SCP that records what it gets and answers as told.

    `answers` holds what the next C-STOREs get: a status number, "silent" (no answer
    until the sender gives up) or "abort" (an A-ABORT instead); after that, Success.
    `contexts` limits the SOP classes.
    """

    def __init__(
        self, ae_title: str = "RECORDER", contexts: list[PresentationContext] | None = None
    ) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.received: list[str] = []  # SOP Instance UIDs, in order, repeats included
        self.keep = False  # keep each data set received (in `datasets`)
        self.datasets: list[Dataset] = []
        self.answers: deque[int | str] = deque()
        self.silence = 3.0
        self.delay = 0.0  # seconds each C-STORE takes
        self._contexts = contexts or AllStoragePresentationContexts
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()

    def start(self) -> RecordingSCP:
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = self._contexts
        ae.require_called_aet = True
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _store(self, event: Any) -> int | Dataset:
        with self._lock:
            answer = self.answers.popleft() if self.answers else 0
        if answer == "silent":
            time.sleep(self.silence)
            return 0xA700
        if answer == "abort":
            event.assoc.abort()
            return 0xA700
        time.sleep(self.delay)
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        if self.keep:
            self.datasets.append(event.dataset)
        return int(answer)
