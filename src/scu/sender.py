"""C-STORE of a job's DICOM files to one destination, with every response checked.

pynetdicom opens, negotiates, releases and aborts the association. The C-STOREs
themselves are done by the sending thread (command sets in scu/dimse.py), because
pynetdicom's own path reached only 0.21-0.26x the rate of dcmtk's storescu here
(bench/delivery_throughput.py; docs/architecture/decisions/sender-writes-pdus.md):

- Its association reactor, a second thread that polls every millisecond, is kept paused
  for the session. `send_c_store` otherwise waits for it to pause before every message,
  and a response it takes meanwhile is lost: the race in pynetdicom's sender that stalls
  a send for the whole DIMSE timeout.
- Each message's P-DATA PDUs (the data set is the file's bytes after its meta group,
  never decoded) go out in one `sendmsg`, not one queued PDU per turn of the DUL loop.
- Each response is read and decoded on the sending thread, while the DUL thread is told
  the socket has nothing for it; it gets the socket back for the release.

A send that gets no status within the timeout, or anything but a response, is a failure
of that send: the association is aborted, a new one is opened and the file is sent
again, a few times at most. A file the destination refuses is reported and the others
go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from isdr.domain.destination import Destination
from isdr.scu.dimse import C_STORE_RSP, BadResponse, c_store_rq, c_store_rsp_fields
from isdr.tls import TlsFilesError, client_context

logger = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # presentation contexts one association may propose
RESENDS = 3  # new associations for one file whose send got no status
MIN_SHARE = 20  # files per association at least, when sending over several
# Statuses after which the destination has the instance (PS3.4 B.2.3, PS3.7 C): success,
# and the warnings: 0x0001, 0x0107 (attribute list), 0x0116 (value out of range), 0xBxxx.
WARNINGS = frozenset({0x0001, 0x0107, 0x0116})
P_DATA_TF = 0x04
LAST_FRAGMENT = 0x02
COMMAND = 0x01
# PDU type, reserved, PDU length; PDV item length, presentation context, message control.
_PDU_HEADER = struct.Struct(">BBIIBB")
_PDU_START = struct.Struct(">BBI")  # PDU type, reserved, PDU length
MAX_RESPONSE_PDU = 1 << 20  # a C-STORE response is a few hundred bytes
LOOP_DELAY = 0.0002  # pynetdicom's DUL idle sleep while it negotiates and releases
IDLE_LOOP_DELAY = 0.005  # ... and while the sending thread has the socket
Buffer = bytes | memoryview
IOV_MAX = 1024  # buffers one sendmsg may take
DUL_TURN_LIMIT = 1.0  # seconds to wait for the DUL thread to come round its loop once
A_ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # PDU type 7, length 4, from the user


@dataclass(frozen=True)
class FileToSend:
    """A DICOM file and what negotiating it needs."""

    name: str
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass
class Report:
    """What a session achieved: the files confirmed, those refused, and why it ended."""

    confirmed: int = 0
    refused: dict[str, str] = field(default_factory=dict)
    error: str = ""  # why the session ended early; "" when every file got an answer

    @property
    def complete(self) -> bool:
        """Whether every file was confirmed."""
        return not self.error and not self.refused


@dataclass(frozen=True)
class SendOptions:
    """Who we are, and how long a destination may take."""

    calling_ae_title: str
    timeout: float  # connect, association and DIMSE timeouts
    associations: int = 1  # in parallel, to one destination


class SendFailed(Exception):
    """A send got no valid response: the association is no longer usable."""


def send_files(
    peer: Destination,
    files: Sequence[FileToSend],
    options: SendOptions,
    on_confirmed: Callable[[FileToSend, int], None],
    stop: threading.Event,
) -> Report:
    """Send `files` to `peer`; `on_confirmed` records each one the peer confirmed.

    With `options.associations` > 1 the files are shared out over that many associations
    in parallel (never more than one per MIN_SHARE files).
    """
    count = max(1, min(options.associations, len(files) // MIN_SHARE))
    if count == 1:
        return _send_share(peer, list(files), options, on_confirmed, stop)
    shares = [list(files[n::count]) for n in range(count)]
    with ThreadPoolExecutor(count, thread_name_prefix="isdr-send") as pool:
        reports = pool.map(
            lambda share: _send_share(peer, share, options, on_confirmed, stop), shares
        )
        return _merged(list(reports))


def _send_share(
    peer: Destination,
    files: list[FileToSend],
    options: SendOptions,
    on_confirmed: Callable[[FileToSend, int], None],
    stop: threading.Event,
) -> Report:
    report = Report()
    for batch in _batches(files):
        _send_batch(peer, batch, options, on_confirmed, stop, report)
        if report.error:
            break
    return report


def _merged(reports: list[Report]) -> Report:
    merged = Report()
    for report in reports:
        merged.confirmed += report.confirmed
        merged.refused.update(report.refused)
        merged.error = merged.error or report.error
    return merged


def _batches(files: Sequence[FileToSend]) -> Iterator[list[FileToSend]]:
    """Split files so that no association needs more than MAX_CONTEXTS contexts."""
    batch: list[FileToSend] = []
    pairs: set[tuple[str, str]] = set()
    for item in files:
        pair = (item.sop_class_uid, item.transfer_syntax_uid)
        if pair not in pairs and len(pairs) == MAX_CONTEXTS:
            yield batch
            batch, pairs = [], set()
        pairs.add(pair)
        batch.append(item)
    if batch:
        yield batch


def _send_batch(
    peer: Destination,
    batch: list[FileToSend],
    options: SendOptions,
    on_confirmed: Callable[[FileToSend, int], None],
    stop: threading.Event,
    report: Report,
) -> None:
    index, failures = 0, 0
    while index < len(batch) and not stop.is_set():
        try:
            with _session(peer, batch, options) as session:
                while index < len(batch) and not stop.is_set():
                    _send_one(session, batch[index], on_confirmed, report)
                    index, failures = index + 1, 0
        except SendFailed as exc:
            failures += 1
            if failures > RESENDS:
                report.error = f"{batch[index].name}: {exc} ({failures} associations tried)"
                return
            logger.warning("%s: %s; opening a new association to send it again", peer, exc)
        except _Refused as exc:
            report.error = str(exc)
            return
    if stop.is_set() and index < len(batch):
        report.error = "the relay is stopping"


def _send_one(
    session: _Session,
    item: FileToSend,
    on_confirmed: Callable[[FileToSend, int], None],
    report: Report,
) -> None:
    context_id = session.contexts.get((item.sop_class_uid, item.transfer_syntax_uid))
    if context_id is None:
        report.refused[item.name] = (
            f"the destination accepted no presentation context for {item.sop_class_uid} in "
            f"{item.transfer_syntax_uid}"
        )
        return
    code = session.store(item, context_id)
    if is_stored(code):
        on_confirmed(item, code)
        report.confirmed += 1
        report.refused.pop(item.name, None)
    else:
        report.refused[item.name] = f"refused with status 0x{code:04X}"


def is_stored(status: int) -> bool:
    """Whether a C-STORE status says the destination has the instance: success, or a
    warning (kept, perhaps coerced); everything else is a refusal or failure."""
    return status == 0x0000 or status in WARNINGS or 0xB000 <= status <= 0xBFFF


class _Refused(Exception):
    """The destination cannot be reached or refused the association."""


class _Session:
    """An established association on which the sending thread writes whole C-STOREs."""

    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc
        self.contexts = {
            (str(c.abstract_syntax), str(c.transfer_syntax[0])): int(c.context_id)
            for c in assoc.accepted_contexts
            if c.context_id is not None and c.abstract_syntax and c.transfer_syntax
        }
        sock = assoc.dul.socket.socket if assoc.dul.socket else None
        if sock is None:
            raise SendFailed("the association has no socket")
        self.socket: socket.socket = sock
        self.max_pdu = assoc.dimse.maximum_pdu_size or (1 << 30)
        self.message_id = 0
        self._buffer = bytearray()

    def store(self, item: FileToSend, context_id: int) -> int:
        """One C-STORE; the status, or SendFailed when none came back."""
        try:
            data = self._read(item.path)
            offset = data_set_offset(data)
        except (OSError, ValueError) as exc:
            raise SendFailed(f"cannot read {item.name}: {exc}") from exc
        self.message_id = self.message_id % 0xFFFF + 1
        command = c_store_rq(self.message_id, item.sop_class_uid, item.sop_instance_uid)
        parts = _fragments(context_id, COMMAND, command, self.max_pdu)
        parts += _fragments(context_id, 0, data[offset:], self.max_pdu)
        try:
            _send_all(self.socket, parts)
        except OSError as exc:
            raise SendFailed(f"the send failed ({exc!r})") from exc
        try:
            kind, answered, status = c_store_rsp_fields(self._response())
        except BadResponse as exc:
            raise SendFailed(str(exc)) from exc
        if kind != C_STORE_RSP or answered != self.message_id:
            raise SendFailed("the response does not answer this request")
        return status

    def _read(self, path: Path) -> memoryview:
        """The file's bytes, in a buffer the session reuses: a fresh 0.5 MB object per file
        costs four times the read itself (page faults), measured."""
        with path.open("rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            if len(self._buffer) < size:
                self._buffer = bytearray(size)
            view = memoryview(self._buffer)[:size]
            if handle.readinto(view) != size:
                raise ValueError("the file changed while it was read")
        return view

    def _response(self) -> bytes:
        """Read the response's P-DATA PDUs on this thread: its command set."""
        command = bytearray()
        while True:
            kind, body = _read_pdu(self.socket)
            if kind != P_DATA_TF:
                raise SendFailed(f"the destination sent PDU type 0x{kind:02X}, not a response")
            for control, fragment in _pdvs(body):
                if not control & COMMAND:
                    raise SendFailed("the response came with a data set")
                command += fragment
                if control & LAST_FRAGMENT:
                    return bytes(command)


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """One PDU: its type and body. A timeout or a closed connection is a SendFailed."""
    header = _read_exactly(sock, 6)
    kind, _reserved, length = _PDU_START.unpack(header)
    if length > MAX_RESPONSE_PDU:
        raise SendFailed(f"the destination announced a PDU of {length} bytes for a response")
    return int(kind), _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    buffer = bytearray(count)
    view, received = memoryview(buffer), 0
    try:
        while received < count:
            got = sock.recv_into(view[received:], count - received)
            if got == 0:
                raise SendFailed("the destination closed the connection")
            received += got
    except TimeoutError as exc:
        raise SendFailed("no status came back within the timeout") from exc
    except OSError as exc:
        raise SendFailed(f"the connection broke ({exc!r})") from exc
    return bytes(buffer)


def _pdvs(body: bytes) -> Iterator[tuple[int, bytes]]:
    """(message control header, fragment) of each presentation data value item."""
    position = 0
    while position + 6 <= len(body):
        (length,) = struct.unpack_from(">I", body, position)
        control = body[position + 5]
        yield control, body[position + 6 : position + 4 + length]
        position += 4 + length


def data_set_offset(data: Buffer) -> int:
    """Where the data set of a Part 10 file begins: after its File Meta Information."""
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("not a DICOM Part 10 file with a file meta group length")
    (length,) = struct.unpack_from("<I", data, 140)
    return 144 + int(length)


def _send_all(sock: socket.socket, parts: list[Buffer]) -> None:
    """Write every part, in order, without joining them into one copy (over TLS, which
    has no sendmsg, joined into one record stream)."""
    if isinstance(sock, ssl.SSLSocket):
        sock.sendall(b"".join(parts))
        return
    views = [memoryview(part) for part in parts]
    first = 0
    while first < len(views):
        sent = sock.sendmsg(views[first : first + IOV_MAX])
        while first < len(views) and sent >= len(views[first]):
            sent -= len(views[first])
            first += 1
        if sent:
            views[first] = views[first][sent:]


@contextmanager
def _session(
    peer: Destination, batch: list[FileToSend], options: SendOptions
) -> Iterator[_Session]:
    """An association proposing every file's SOP class and transfer syntax, tuned."""
    ae = AE(ae_title=options.calling_ae_title)
    ae.requested_contexts = _contexts(batch)
    ae.acse_timeout = ae.dimse_timeout = options.timeout
    ae.network_timeout = None  # reads time out per response instead (see _reactor_held)
    ae.connection_timeout = options.timeout
    context = _tls_context(peer)
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, _on_connection_open)],
        tls_args=None if context is None else (context, peer.host),
    )
    if not assoc.is_established:
        raise _Refused(_why_not_established(assoc, peer, context, options.timeout))
    try:
        with _reactor_held(assoc, options.timeout):
            yield _Session(assoc)
        assoc.release()
    finally:
        if assoc.is_alive():
            assoc.abort()


def _contexts(batch: list[FileToSend]) -> list[PresentationContext]:
    by_class: dict[str, list[str]] = {}
    for item in batch:
        syntaxes = by_class.setdefault(item.sop_class_uid, [])
        if item.transfer_syntax_uid not in syntaxes:
            syntaxes.append(item.transfer_syntax_uid)
    contexts = []
    for sop_class, syntaxes in by_class.items():
        for syntax in syntaxes:  # one context each: a peer may accept one and not another
            context = PresentationContext()
            context.abstract_syntax = sop_class
            context.transfer_syntax = [syntax]
            contexts.append(context)
    return contexts


def _tls_context(peer: Destination) -> ssl.SSLContext | None:
    if peer.tls is None:
        return None
    try:
        return client_context(peer.tls)
    except TlsFilesError as exc:
        raise _Refused(f"cannot use the TLS files for {peer}: {exc}") from exc


def _why_not_established(
    assoc: Association, peer: Destination, context: ssl.SSLContext | None, timeout: float
) -> str:
    problem = None if context is None else _tls_problem(peer, context, timeout)
    if problem:  # TLS 1.3: a refused client certificate shows only after the handshake
        return f"cannot connect to {peer}: {problem}"
    if not getattr(assoc, "isdr_connected", False):
        return f"cannot connect to {peer}"
    if assoc.is_rejected:
        return f"{peer} rejected the association (is our AE title known to it?)"
    if assoc.is_aborted:
        return f"{peer} aborted the association request"
    return f"{peer} did not accept the association"


def _tls_problem(peer: Destination, context: ssl.SSLContext, timeout: float) -> str | None:
    """Why a TLS connection to `peer` fails, tried again on its own (pynetdicom logs the
    reason only in its own log).

    In TLS 1.3 the peer checks our certificate after our side of the handshake is done,
    and its refusal, an alert, comes whenever it has checked. So we ask for an answer
    rather than wait a while: an A-ABORT, which a peer that took our certificate answers
    by hanging up, and a peer that refused it reads (if ever) after sending its alert.
    """
    try:
        with (
            socket.create_connection((peer.host, peer.port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=peer.host) as tls,
        ):
            with contextlib.suppress(OSError):  # a peer that refused us may be gone already
                tls.sendall(A_ABORT)
            while tls.recv(4096):  # its alert (raised), or its hang-up (b"")
                pass
            return None
    except ssl.SSLError as exc:
        return f"the TLS handshake failed ({exc.reason or exc})" + (
            ": check the fingerprint's tls ca_file (and check_hostname)"
            if isinstance(exc, ssl.SSLCertVerificationError)
            else ""
        )
    except OSError:
        return None


def _on_connection_open(event: evt.Event) -> None:
    event.assoc.isdr_connected = True  # type: ignore[attr-defined]
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    event.assoc.dul._run_loop_delay = LOOP_DELAY


class _HeldCheckpoint(threading.Event):
    """The association reactor's pause switch, kept off while `held`."""

    held = False

    def set(self) -> None:
        if not self.held:
            super().set()


@contextmanager
def _reactor_held(assoc: Association, timeout: float) -> Iterator[None]:
    """The association is the sending thread's for the session.

    pynetdicom's association reactor stays paused, and its DUL thread stops reading the
    socket (the sending thread reads each response itself); both are given back before
    the release, with the idle timer restarted.
    """
    checkpoint = _HeldCheckpoint()
    assoc._reactor_checkpoint = checkpoint
    deadline = time.monotonic() + 5.0
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0005)
    checkpoint.held = True
    dul = assoc.dul
    past_any_read = threading.Event()

    def nothing_to_read() -> bool:
        past_any_read.set()
        return False

    dul._is_transport_event = nothing_to_read  # type: ignore[method-assign]
    dul._run_loop_delay = IDLE_LOOP_DELAY  # it has nothing to do meanwhile
    # The DUL thread may have looked up its own check just before, and be about to read
    # the socket: a response read there is lost to us (pynetdicom's "unexpected C-STORE
    # service message", then a resend after the timeout). Once it calls ours, it is past.
    past_any_read.wait(DUL_TURN_LIMIT)
    sock = dul.socket.socket if dul.socket else None
    previous = sock.gettimeout() if sock is not None else None
    if sock is not None:
        sock.settimeout(timeout)
    try:
        yield
    finally:
        del dul._is_transport_event  # the class's method again
        dul._run_loop_delay = LOOP_DELAY
        if sock is not None:
            sock.settimeout(previous)
        dul._idle_timer.restart()
        checkpoint.held = False
        checkpoint.set()


def _fragments(context_id: int, control: int, data: Buffer, max_pdu: int) -> list[Buffer]:
    """P-DATA-TF PDUs of one PDV each, none longer than the peer's maximum PDU length."""
    step = max(max_pdu - 6, 1)
    view = memoryview(data)
    parts: list[Buffer] = []
    for start in range(0, max(len(data), 1), step):
        chunk = view[start : start + step]
        flags = control | (LAST_FRAGMENT if start + step >= len(data) else 0)
        length = len(chunk)
        parts.append(_PDU_HEADER.pack(P_DATA_TF, 0, length + 6, length + 2, context_id, flags))
        parts.append(chunk)
    return parts
