"""Fast-ingest mode: dcmtk's storescp receives, the inbox watcher records.

storescp (C++, one process per association with --fork) writes each instance, exactly as
received (--bit-preserving), into a spool folder under INCOMING_DIR and answers Success
once the file is complete and closed. The relay's inbox takes every closed file from
there, sorts it into the tree and records it. Success therefore means "safely on disk",
and the record follows within moments; a file left in the spool by a crash is recorded
at the next start (or deleted, when it is incomplete: its sender got no Success).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from isdr.errors import IsdrError

logger = logging.getLogger(__name__)

SPOOL_NAME = "_storescp"  # sanitised names never start with "_", so no patient can clash
DCMTK_MAX_PDU = 131072
DCMTK_MIN_PDU = 4096


class DcmtkReceiver:
    """Runs storescp as a child process writing into `spool`."""

    def __init__(self, spool: Path, *, ae_title: str, host: str, port: int, max_pdu: int) -> None:
        self.spool = spool
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.max_pdu = min(max(max_pdu or DCMTK_MAX_PDU, DCMTK_MIN_PDU), DCMTK_MAX_PDU)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def listening(self) -> bool:
        """Whether storescp runs."""
        return self._process is not None and self._process.poll() is None

    def associations(self) -> int:
        """Not known: storescp keeps its associations to itself."""
        return 0

    def command(self) -> list[str]:
        """The storescp command line."""
        executable = shutil.which("storescp")
        if executable is None:
            raise IsdrError("RECEIVER=dcmtk needs dcmtk's storescp (apt-get install dcmtk)")
        # setpriv (util-linux) makes the kernel send storescp SIGTERM when the relay dies,
        # even by SIGKILL, so that no orphan keeps the port and writes into the spool.
        guard = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []
        return [
            *guard,
            executable,
            "--fork",
            "--bit-preserving",
            "--accept-all",
            "--disable-host-lookup",
            "--aetitle", self.ae_title,
            "--max-pdu", str(self.max_pdu),
            "--output-directory", str(self.spool),
            "--filename-extension", ".dcm",
            str(self.port),
        ]  # fmt: skip

    def start(self) -> None:
        """Start storescp and wait until it accepts connections."""
        self.spool.mkdir(parents=True, exist_ok=True)
        if self.host not in ("0.0.0.0", "", "::"):
            logger.warning(
                "RECEIVER=dcmtk: storescp listens on every address; SCP_HOSTNAME=%s is not "
                "applied (firewall the port instead)",
                self.host,
            )
        self._process = subprocess.Popen(
            self.command(),
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        threading.Thread(target=self._forward_output, daemon=True, name="storescp-log").start()
        self._wait_until_listening()
        time.sleep(0.3)  # a port held by another process: storescp exits at once, after our probe
        if self._process.poll() is not None:
            raise IsdrError(
                f"storescp exited with {self._process.returncode}: is port {self.port} in use?"
            )
        logger.info(
            "Store SCP %s (dcmtk storescp, pid %d) listening on port %d, spool %s",
            self.ae_title, self._process.pid, self.port, self.spool,
        )  # fmt: skip

    def stop(self, timeout: float) -> None:
        """Stop listening, give associations in flight `timeout` seconds, then end them."""
        process, self._process = self._process, None
        if process is None:
            return
        group = process.pid
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ProcessLookupError):
            os.kill(group, signal.SIGTERM)  # the listener only; associations finish
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=min(timeout, 2.0))
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.05)
        cut = _group_alive(group)
        _signal_group(group, signal.SIGKILL)
        logger.info("storescp stopped%s", " (associations cut)" if cut else "")

    def _wait_until_listening(self, timeout: float = 10.0) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise IsdrError(f"storescp exited with {self._process.returncode} at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise IsdrError(f"storescp did not listen on port {self.port} within {timeout:.0f} s")

    def _forward_output(self) -> None:
        process = self._process
        if process is None or process.stdout is None:
            return
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                logger.warning("storescp: %s", line)


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signum)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
