"""`isdr standin`: the stand-in InferenceServer on its own, for a relay run by hand.

It serves both generations (one port each) from a temporary folder and, with a
destination folder, runs a Store SCP that keeps what it receives there; it prints what
listens where, the CA file to give the relay as CERT_FILE and a fingerprint per
generation to paste, then serves until stopped (Ctrl+C, SIGTERM or the `stop` event).
"""

from __future__ import annotations

import json
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from isdr.demo.destination import Destination
from isdr.demo.standin import StandIn

MODELS = ("ct-model", "mr-model")
DESTINATION_AE = "STANDIN_PACS"
READY = "Ready: stop with Ctrl+C."


def serve_standin(
    out: TextIO,
    *,
    destination: Path | None = None,
    host: str = "127.0.0.1",
    port_v1: int = 0,
    port_v2: int = 0,
    stop: threading.Event | None = None,
) -> int:
    """Serve the stand-in (and the destination) until `stop` is set, or, without `stop`,
    until SIGINT or SIGTERM; 0 when stopped."""
    with tempfile.TemporaryDirectory(prefix="isdr-standin-") as temp:
        standin = StandIn(Path(temp), MODELS, host=host, port_v1=port_v1, port_v2=port_v2)
        scp = None if destination is None else Destination(destination, ae_title=DESTINATION_AE,
                                                           host=host)  # fmt: skip
        standin.start()
        try:
            if scp is not None:
                scp.start()
            describe(out, standin, scp)
            _wait(stop)
        finally:
            if scp is not None:
                scp.stop()
            standin.stop()
    print("Stopped.", file=out, flush=True)
    return 0


def describe(out: TextIO, standin: StandIn, scp: Destination | None) -> None:
    """What listens where, the CA file and a fingerprint per generation."""
    lines = [
        "isdr stand-in InferenceServer",
        f"  generation 1 (v1.2): {standin.url_v1}",
        f"  generation 2 (2.0):  {standin.url_v2}",
        f"  models: {', '.join(sorted(standin.models))}",
    ]
    if scp is not None:
        lines.append(f"  destination Store SCP: {scp.ae_title} on {_reachable(scp.host)}:"
                     f"{scp.port}, keeping what it receives in {scp.folder}")  # fmt: skip
    lines += [f"CERT_FILE={standin.ca_file}", ""]
    for api in (1, 2):
        lines.append(f"Fingerprint for generation {api} (a .json file in FINGERPRINT_DIR):")
        lines += [json.dumps(fingerprint(standin, api, scp), indent=2), ""]
    print("\n".join([*lines, READY]), file=out, flush=True)


def fingerprint(standin: StandIn, api: int, scp: Destination | None) -> dict[str, Any]:
    """A fingerprint sending every CT series to the stand-in's CT model."""
    scus = [] if scp is None else [{"scu_ip": _reachable(scp.host), "scu_port": scp.port,
                                    "scu_ae_title": scp.ae_title}]  # fmt: skip
    return {
        "description": f"every CT series to the stand-in's ct-model (generation {api})",
        "modality_regex": "^CT$",
        "inference_server_url": standin.url_v1 if api == 1 else standin.url_v2,
        "inference_server_api": api,
        "model_human_readable_id": "ct-model",
        "scus": scus,
    }


def _reachable(host: str) -> str:
    """The address a relay on this machine uses for a listener bound to `host`."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def _wait(stop: threading.Event | None) -> None:
    if stop is not None:
        stop.wait()
        return
    stopping = threading.Event()
    with _signals_set(stopping):
        while not stopping.wait(0.5):  # short waits: a signal handler runs between them
            pass


@contextmanager
def _signals_set(event: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `event` while inside; the previous handlers come back after."""

    def handle(signum: int, frame: FrameType | None) -> None:
        event.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
