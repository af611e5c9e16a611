"""Soak: a legitimate sender against a relay under attack from its own address.

While dcmtk's storescu sends 2,000 instances, from 127.0.0.1 like it:

- 200 idle sockets are kept open (one reopened whenever the relay closes one);
- 20 byte-drippers send a byte every 2 s: 10 of an A-ASSOCIATE-RQ, 10 of a P-DATA-TF
  PDU inside an association (each reconnects when dropped);
- 1 sender of an endless data set: a C-STORE-RQ, then data set fragments that never set
  the last-fragment bit, as fast as the relay takes them (it reconnects when aborted).

The relay is `isdr serve` in its default configuration (SQLite, no fingerprint: every
instance stays recorded and on disk), as a subprocess.

Checked at the end: both runs of storescu (one before the attack, one during) exit 0 and
every instance is recorded; the relay's peak RSS during the attack is within 2x its RSS
when idle (after a warm-up series); once the attackers leave, its thread count is back
to the idle count within a minute; no ERROR line. Measured: the legitimate sender's time
with and without the attack (a ratio), RSS, peak RSS, threads, the relay's CPU, and what
the relay logged of the attack.

    .venv/bin/python bench/soak.py                     # the issue's sizes (about a minute)
    .venv/bin/python bench/soak.py --instances 200     # a quick one
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from bench.flood import (
    KEPT_VARIABLES,
    Sample,
    Sampler,
    free_port,
    machine,
    sample,
    start_relay,
    stop_relay,
)
from isdr.synthetic import SeriesSpec, write_series

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
AE_TITLE = "SOAK"
DRIP_EVERY = 2.0  # seconds between a dripper's bytes
DRAIN_LIMIT = 60.0  # seconds the relay has to be back to its idle threads
FRAGMENT = 64000  # bytes of each fragment of the endless data set
STORESCU = ["storescu", "-aet", "GOOD", "-aec", AE_TITLE, "+sd", "+r", "+sp", "*.dcm"]


# --- raw DICOM Upper Layer, just enough to attack with ------------------------------------


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(body)) + body


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxI", kind, len(body)) + body


def associate_rq() -> bytes:
    items = _item(0x10, b"1.2.840.10008.3.1.1.1")
    sub = _item(0x30, MRImageStorage.encode()) + _item(0x40, ExplicitVRLittleEndian.encode())
    items += _item(0x20, struct.pack(">Bxxx", 1) + sub)
    items += _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4"))
    fixed = struct.pack(">HH16s16s32x", 1, 0, AE_TITLE.ljust(16).encode(), b"ATTACKER".ljust(16))
    return _pdu(0x01, fixed + items)


def p_data(control: int, data: bytes) -> bytes:
    return _pdu(0x04, struct.pack(">IBB", len(data) + 2, 1, control) + data)


def c_store_rq() -> bytes:
    def element(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0x0000, tag, len(value)) + value

    def uid(text: str) -> bytes:
        raw = text.encode()
        return raw + b"\x00" if len(raw) % 2 else raw

    body = b"".join(
        (
            element(0x0002, uid(MRImageStorage)),
            element(0x0100, struct.pack("<H", 0x0001)),
            element(0x0110, struct.pack("<H", 1)),
            element(0x0700, struct.pack("<H", 0)),
            element(0x0800, struct.pack("<H", 0x0000)),
            element(0x1000, uid(generate_uid())),
        )
    )
    return element(0x0000, struct.pack("<I", len(body))) + body


# --- the attackers ------------------------------------------------------------------------


@dataclass
class Attack:
    """The attackers' threads and what they managed."""

    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    connections: dict[str, int] = field(default_factory=dict)
    endless_bytes: int = 0
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str) -> None:
        with self.lock:
            self.connections[kind] = self.connections.get(kind, 0) + 1

    def connect(self, kind: str) -> socket.socket:
        self.count(kind)
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def start(self, idle: int, drippers: int) -> None:
        targets: list[Callable[[], None]] = [lambda: self.keep_idle(idle), self.endless]
        targets += [self.drip_request] * (drippers // 2)
        targets += [self.drip_in_association] * (drippers - drippers // 2)
        for target in targets:
            thread = threading.Thread(target=self.forever, args=(target,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def forever(self, target: Callable[[], None]) -> None:
        while not self.stop.is_set():
            try:
                target()
            except OSError:
                self.stop.wait(0.05)

    def keep_idle(self, count: int) -> None:
        """`count` sockets that say nothing; one the relay closed is opened again."""
        sockets: list[socket.socket] = []
        try:
            while not self.stop.is_set():
                sockets = [s for s in sockets if not _closed(s)]
                while len(sockets) < count:
                    sockets.append(self.connect("idle"))
                self.stop.wait(0.5)
        finally:
            for sock in sockets:
                sock.close()

    def drip_request(self) -> None:
        with self.connect("dripping a request") as sock:
            for byte in associate_rq():
                sock.sendall(bytes([byte]))
                if self.stop.wait(DRIP_EVERY):
                    return

    def drip_in_association(self) -> None:
        with self.connect("dripping in an association") as sock:
            _associate(sock)
            for byte in p_data(0x03, c_store_rq()):
                sock.sendall(bytes([byte]))
                if self.stop.wait(DRIP_EVERY):
                    return

    def endless(self) -> None:
        with self.connect("endless data set") as sock:
            _associate(sock)
            sock.sendall(p_data(0x03, c_store_rq()))
            fragment = p_data(0x00, b"\x00" * FRAGMENT)
            while not self.stop.is_set():
                sock.sendall(fragment)
                with self.lock:
                    self.endless_bytes += FRAGMENT

    def end(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def _associate(sock: socket.socket) -> None:
    sock.sendall(associate_rq())
    kind = sock.recv(1)
    if kind != b"\x02":
        raise ConnectionError(f"not accepted ({kind!r})")
    sock.settimeout(0.2)
    try:  # the rest of the A-ASSOCIATE-AC
        while sock.recv(65536):
            pass
    except TimeoutError:
        pass
    sock.settimeout(30)


def _closed(sock: socket.socket) -> bool:
    try:
        sock.setblocking(False)
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        if sock.fileno() != -1:
            sock.setblocking(True)


# --- the run ------------------------------------------------------------------------------


@dataclass
class Result:
    instances: int
    idle_sockets: int
    drippers: int
    clean_seconds: float = 0.0
    attacked_seconds: float = 0.0
    idle: Sample | None = None
    peak_during_attack_mb: float = 0.0
    threads_during_attack_max: int = 0
    relay_cpu_during_attack: float = 0.0  # cores
    after: Sample | None = None
    drained_seconds: float = 0.0  # from the attackers' leaving to the idle thread count
    recorded: int = 0
    attack_connections: dict[str, int] = field(default_factory=dict)
    endless_mb_sent: float = 0.0
    log_lines: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    machine: str = ""


LOG_MARKS = {
    "closed to make room": "to make room",
    "A-ASSOCIATE-RQ late": "A-ASSOCIATE-RQ was not whole",
    "PDU late": "was not whole within",
    "data set over its limit": "sent a data set of more than",
    "association refused": "association refused",
    "ERROR": " ERROR ",
}


def storescu(port: int, folder: Path) -> tuple[int, float, str]:
    began = time.monotonic()
    done = subprocess.run(
        [*STORESCU, "127.0.0.1", str(port), str(folder)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    return done.returncode, time.monotonic() - began, done.stderr[-2000:]


def write_data(folder: Path, instances: int) -> None:
    per_series = 500
    for number in range(0, instances, per_series):
        count = min(per_series, instances - number)
        write_series(folder / f"s{number}", SeriesSpec(modality="MR", count=count))


def relay_env(work: Path, port: int) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if k in KEPT_VARIABLES},
        "SCP_HOSTNAME": "127.0.0.1",
        "SCP_PORT": str(port),
        "HTTP_PORT": "0",
        "SCP_AE_TITLE": AE_TITLE,
        "DATA_DIR": str(work / "data"),
        "INCOMING_DIR": str(work / "incoming"),
        "FINGERPRINT_DIR": str(work / "fingerprints"),
        "MIN_FREE_DISK_MB": "0",
        "LOG_LEVEL": "INFO",
    }


def run_soak(instances: int, idle: int, drippers: int, say: Callable[[str], None]) -> Result:
    result = Result(instances, idle, drippers, machine=machine())
    with tempfile.TemporaryDirectory(prefix="isdr-soak-") as name:
        work = Path(name)
        (work / "fingerprints").mkdir()
        for part, count in (("warm", 20), ("clean", instances), ("attacked", instances)):
            write_data(work / part, count)
        port = free_port()
        log = work / "relay.log"
        relay = start_relay(relay_env(work, port), log, port)
        try:
            _soak(result, work, port, relay.pid, idle, drippers, say)
        finally:
            stop_relay(relay)
            text = log.read_text(errors="replace")
            result.log_lines = {k: text.count(mark) for k, mark in LOG_MARKS.items()}
            result.recorded = _recorded(work / "data" / "isdr.sqlite3")
    _check(result)
    return result


def _soak(
    result: Result, work: Path, port: int, pid: int, idle: int, drippers: int,
    say: Callable[[str], None],
) -> None:  # fmt: skip
    began = time.monotonic()
    _send(result, "warm", storescu(port, work / "warm"))
    time.sleep(3)
    result.idle = sample(pid, began)
    say(f"idle relay: {result.idle.rss_mb} MB, {result.idle.threads} threads")
    _, result.clean_seconds, _ = _send(result, "clean", storescu(port, work / "clean"))
    say(f"{result.instances} instances without an attack: {result.clean_seconds:.1f} s")
    attack = Attack(port)
    sampler = Sampler(pid, began)
    sampler.start()
    attack.start(idle, drippers)
    time.sleep(3)
    _, result.attacked_seconds, _ = _send(result, "attacked", storescu(port, work / "attacked"))
    say(f"{result.instances} instances under attack: {result.attacked_seconds:.1f} s")
    attack.end()
    sampler.done.set()
    during = sampler.samples
    result.peak_during_attack_mb = max((s.rss_mb for s in during), default=0.0)
    result.threads_during_attack_max = max((s.threads for s in during), default=0)
    if len(during) > 1:
        spent = during[-1].cpu_seconds - during[0].cpu_seconds
        result.relay_cpu_during_attack = round(spent / (during[-1].at - during[0].at), 2)
    result.attack_connections = dict(attack.connections)
    result.endless_mb_sent = round(attack.endless_bytes / 1e6, 1)
    left = time.monotonic()
    while True:  # the relay drops what the attackers left behind
        result.after = sample(pid, began)
        result.drained_seconds = round(time.monotonic() - left, 1)
        idle = result.idle.threads
        if result.after.threads <= idle + 2 or result.drained_seconds > DRAIN_LIMIT:
            break
        time.sleep(1)
    say(
        f"after the attack: {result.after.rss_mb} MB, {result.after.threads} threads "
        f"({result.drained_seconds} s after the attackers left)"
    )


def _send(result: Result, what: str, done: tuple[int, float, str]) -> tuple[int, float, str]:
    if done[0] != 0:
        result.failures.append(f"storescu ({what}) exited {done[0]}: {done[2]}")
    return done


def _recorded(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return int(connection.execute("select count(*) from instance").fetchone()[0])


def _check(result: Result) -> None:
    expected = 20 + 2 * result.instances
    if result.recorded != expected:
        result.failures.append(f"{result.recorded} instances recorded, {expected} sent")
    idle, after = result.idle, result.after
    if idle is not None and result.peak_during_attack_mb > 2 * idle.rss_mb:
        result.failures.append(
            f"RSS reached {result.peak_during_attack_mb} MB under attack, idle {idle.rss_mb} MB"
        )
    if idle is not None and after is not None and after.threads > idle.threads + 2:
        result.failures.append(
            f"{after.threads} threads {DRAIN_LIMIT:.0f} s after the attack, {idle.threads} before"
        )
    if result.log_lines.get("ERROR"):
        result.failures.append(f"{result.log_lines['ERROR']} ERROR line(s) in the relay's log")


def report(result: Result) -> str:
    idle, after = result.idle, result.after
    assert idle is not None and after is not None
    ratio = result.attacked_seconds / max(result.clean_seconds, 1e-9)
    lines = [
        f"soak: {result.instances} instances sent while {result.idle_sockets} idle sockets, "
        f"{result.drippers} drippers and an endless data set attack from the same address",
        f"  sender: {result.clean_seconds:.1f} s alone, {result.attacked_seconds:.1f} s under "
        f"attack (x{ratio:.2f}); {result.recorded} instances recorded",
        f"  RSS: idle {idle.rss_mb} MB, peak under attack {result.peak_during_attack_mb} MB "
        f"(x{result.peak_during_attack_mb / idle.rss_mb:.2f}), after {after.rss_mb} MB",
        f"  threads: idle {idle.threads}, under attack up to {result.threads_during_attack_max}, "
        f"back to {after.threads} {result.drained_seconds} s after the attackers left",
        f"  relay CPU under attack: {result.relay_cpu_during_attack} of a core (of "
        f"{os.cpu_count()}, shared with the sender and the attackers)",
        f"  attack: {result.attack_connections} connections; endless data set "
        f"{result.endless_mb_sent} MB sent",
        f"  relay log: {result.log_lines}",
        "  " + ("PASSED" if not result.failures else "FAILED: " + "; ".join(result.failures)),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--drippers", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help=f"write results (e.g. {RESULTS})")
    args = parser.parse_args()
    result = run_soak(args.instances, args.idle, args.drippers, _progress)
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 1 if result.failures else 0


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
