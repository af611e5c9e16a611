"""Hostile connections to the Store SCP: idle sockets, drippers, malformed requests and
data sets with no end take no more than their share, and a real sender still gets in.

The attackers connect from 127.0.0.1, the address of the good sender (dcmtk's storescu):
the hardest case for bounds per peer address.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from isdr.app import Relay
from isdr.scp.spool import SPOOL_AFTER
from isdr.synthetic import SeriesSpec, make_instance
from tests.helpers import stored_files
from tests.integration.test_hostile_dicom import (
    HOSTILE,
    RawPeer,
    _started,
    associate_rq,
    c_store_rq,
    encode,
    good_series_is_stored,
    nothing_of_the_bad_case_is_left,
    p_data,
    pdv,
    relay_lines,
    wait_for_line,
)

pytestmark = pytest.mark.usefixtures("dcmtk")
CT = [(1, CTImageStorage, ExplicitVRLittleEndian)]


@pytest.fixture
def start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., Relay]]:
    """Start a relay with some settings changed (one per test)."""
    started: list[Iterator[Relay]] = []

    def make(**settings: Any) -> Relay:
        running = _started(tmp_path, caplog, **settings)
        started.append(running)
        return next(running)

    yield make
    for running in started:
        next(running, None)


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Errors nothing caught in a thread, and anything printed raw to stderr for them."""
    caught: list[str] = []
    original = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        caught.append(repr(args.exc_value))
        original(args)

    monkeypatch.setattr(threading, "excepthook", hook)
    return caught


def connect(relay: Relay) -> socket.socket:
    return socket.create_connection(("127.0.0.1", relay.scp.port), timeout=10)


def closed_by_relay(sock: socket.socket, seconds: float = 10) -> bytes:
    """What the relay sent before it closed `sock` (fails if it stays open)."""
    sock.settimeout(seconds)
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def waiting_connections(relay: Relay) -> int:
    return len(relay.scp.connections)


# --- 1: idle connections, drippers, bounds -----------------------------------------------


@pytest.mark.slow
def test_a_sender_associates_while_200_idle_sockets_from_its_address_are_open(
    start: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    relay = start()
    threads_before = threading.active_count()
    idle = [connect(relay) for _ in range(200)]
    try:
        good_series_is_stored(relay)
        per_peer = relay.settings.SCP_MAX_CONNECTIONS_PER_PEER
        assert waiting_connections(relay) <= per_peer
        # two threads per connection at most (pynetdicom's association and its reader)
        assert threading.active_count() - threads_before <= 2 * per_peer + 4
    finally:
        for sock in idle:
            sock.close()
    made_room = [line for line in relay_lines(caplog) if "to make room" in line]
    assert len(made_room) == 1, made_room  # once per peer per minute, with a count
    nothing_of_the_bad_case_is_left(relay)


def test_a_silent_connection_and_a_dripping_request_are_dropped_at_the_associate_timeout(
    start: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    relay = start(SCP_ASSOCIATE_TIMEOUT=1.0)
    silent, dripper = connect(relay), connect(relay)
    request = associate_rq(relay.settings.SCP_AE_TITLE, CT)

    def drip() -> None:
        for byte in request:
            try:
                dripper.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.2)

    threading.Thread(target=drip, daemon=True).start()
    assert closed_by_relay(silent) == b""
    closed_by_relay(dripper)
    wait_for_line(caplog, "A-ASSOCIATE-RQ was not whole within 1 s")
    good_series_is_stored(relay)
    assert waiting_connections(relay) == 0


def test_an_association_that_drips_a_pdu_is_dropped_when_the_pdu_is_late(
    start: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    relay = start(SCP_NETWORK_TIMEOUT=1.5)
    peer = RawPeer(relay.scp.port, relay.settings.SCP_AE_TITLE).associate(CT)
    pdu = p_data(pdv(1, 0x03, c_store_rq(CTImageStorage, generate_uid())))
    for byte in pdu[:40]:  # a byte every 0.1 s: never silent for long, never done
        try:
            peer.send(bytes([byte]))
        except OSError:
            break
        time.sleep(0.1)
    wait_for_line(caplog, f"association from {HOSTILE}", "was not whole within 1.5 s: dropped")
    peer.close()
    good_series_is_stored(relay)


def test_associations_over_their_bound_are_refused_as_a_local_limit_and_logged(
    start: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    relay = start(SCP_MAX_ASSOCIATIONS=2)
    first = RawPeer(relay.scp.port, relay.settings.SCP_AE_TITLE).associate(CT)
    second = RawPeer(relay.scp.port, relay.settings.SCP_AE_TITLE).associate(CT)
    third = RawPeer(relay.scp.port, relay.settings.SCP_AE_TITLE)
    third.send(associate_rq(relay.settings.SCP_AE_TITLE, CT))
    kind, body = third.read_pdu()
    assert kind == 0x03  # A-ASSOCIATE-RJ
    assert tuple(body[1:4]) == (0x02, 0x03, 0x02)  # transient, provider, local limit
    wait_for_line(caplog, "association refused: 2 associations are open", "SCP_MAX_ASSOCIATIONS")
    first.release()
    second.release()
    third.close()
    good_series_is_stored(relay)


def test_a_peer_whose_connections_are_all_associated_gets_no_more_and_one_line(
    start: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    relay = start(SCP_MAX_CONNECTIONS_PER_PEER=2)
    peers = [RawPeer(relay.scp.port, relay.settings.SCP_AE_TITLE).associate(CT) for _ in "ab"]
    refused = [connect(relay) for _ in range(3)]
    assert [closed_by_relay(sock) for sock in refused] == [b""] * 3
    lines = [line for line in relay_lines(caplog) if "connection refused" in line]
    assert len(lines) == 1 and "SCP_MAX_CONNECTIONS_PER_PEER" in lines[0], lines
    for peer in peers:
        peer.release()
    good_series_is_stored(relay)


# --- 2: malformed association requests --------------------------------------------------


def _mutations(request: bytes, count: int) -> Iterator[bytes]:
    """Seeded mutations of a good A-ASSOCIATE-RQ: bytes flipped in its items, cut short,
    lengths changed, items repeated (the PDU's own length kept true)."""
    rng = random.Random(19)
    body = bytearray(request[6:])
    for _ in range(count):
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(68, len(mutated))
            mutated[position] = rng.randrange(256)
        if rng.random() < 0.2:
            del mutated[rng.randrange(68, len(mutated)) :]
        if rng.random() < 0.1:
            mutated += mutated[68:]
        yield struct.pack(">BxI", 0x01, len(mutated)) + bytes(mutated)


def test_malformed_association_requests_are_refused_cleanly_whatever_is_wrong(
    start: Callable[..., Relay], caplog: pytest.LogCaptureFixture, thread_errors: list[str]
) -> None:
    relay = start()
    good = associate_rq(relay.settings.SCP_AE_TITLE, CT)
    even = associate_rq(relay.settings.SCP_AE_TITLE, [(2, CTImageStorage, ExplicitVRLittleEndian)])
    cases = [even, *_mutations(good, 150)]
    for request in cases:
        sock = connect(relay)
        sock.sendall(request)
        answer = closed_by_relay(sock) if request is even else _first_pdu_type(sock)
        sock.close()
        if request is even:
            assert answer[:1] == b"\x07", answer  # an A-ABORT
    deadline = time.monotonic() + 10
    while relay.scp.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert relay.scp.ae.active_associations == []
    assert thread_errors == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("isdr")]
    assert errors == []
    assert any("odd integer" in line for line in relay_lines(caplog))
    good_series_is_stored(relay)


def _first_pdu_type(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    try:
        return sock.recv(1)
    except (ConnectionResetError, TimeoutError):
        return b""


# --- 3: a data set with no end ------------------------------------------------------------


def test_a_data_set_with_no_end_is_cut_at_max_instance_mb_and_leaves_nothing(
    start: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    relay = start(MAX_INSTANCE_MB=4)
    peer = RawPeer(relay.scp.port, relay.settings.SCP_AE_TITLE).associate(CT)
    peer.send(p_data(pdv(1, 0x03, c_store_rq(CTImageStorage, generate_uid()))))
    fragment = p_data(pdv(1, 0x00, b"\x00" * 65000))  # never the last
    sent = 0
    with pytest.raises(OSError):
        while sent < 64 * 2**20:
            peer.send(fragment)
            sent += len(fragment)
    assert sent < 16 * 2**20  # cut off near the limit, not read on and held
    wait_for_line(caplog, "sent a data set of more than 4194304 bytes", "MAX_INSTANCE_MB")
    peer.close()
    good_series_is_stored(relay)
    nothing_of_the_bad_case_is_left(relay)


def test_a_data_set_with_no_end_past_the_spool_size_is_held_on_disk_not_in_memory(
    start: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    relay = start(MAX_INSTANCE_MB=48)
    peer = RawPeer(relay.scp.port, relay.settings.SCP_AE_TITLE).associate(CT)
    peer.send(p_data(pdv(1, 0x03, c_store_rq(CTImageStorage, generate_uid()))))
    fragment = p_data(pdv(1, 0x00, b"\x00" * 65000))
    tracemalloc.start()
    try:
        with pytest.raises(OSError):
            for _ in range(2000):  # 130 MB, never the last fragment
                peer.send(fragment)
        wait_for_line(caplog, "sent a data set of more than 50331648 bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < SPOOL_AFTER + 16 * 2**20, f"{peak / 2**20:.0f} MiB held in memory"
    peer.close()
    good_series_is_stored(relay)
    nothing_of_the_bad_case_is_left(relay)


def test_an_instance_larger_than_the_spool_size_is_stored_whole_and_its_spool_removed(
    start: Callable[..., Relay],
) -> None:
    relay = start()
    ds = make_instance(SeriesSpec(rows=2100, columns=2100), 0, generate_uid(), generate_uid())
    data = encode(ds)
    assert len(data) > SPOOL_AFTER
    peer = RawPeer(relay.scp.port, relay.settings.SCP_AE_TITLE).associate(CT)
    answer = peer.store(data, sop_class=ds.SOPClassUID, sop_instance=ds.SOPInstanceUID)
    peer.release()
    assert answer.status == 0x0000
    [stored] = stored_files(relay.settings.INCOMING_DIR)
    assert stored.read_bytes().endswith(data)
    staging = relay.writer.staging
    assert staging is not None and list(staging.iterdir()) == []
