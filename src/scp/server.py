"""The Store SCP: a thin pynetdicom handler that writes, records, then answers.

No parsing beyond the sorting tags, no decoding of pixel data, no HTTP: the bytes the
sender sent are stored as they are, and Success goes back only once they are on disk
and recorded in the database.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from isdr.domain.access import VERIFICATION, AccessPolicy, is_health_check
from isdr.errors import STATUS_OUT_OF_RESOURCES, InstanceRejected
from isdr.logs import guarded, log_exception
from isdr.scp.admission import ConnectionLimits, ConnectionTable, Throttle
from isdr.scp.guard import WireLimits, guard_of, how_it_ended
from isdr.scp.ingest import Ingestor
from isdr.scp.listen import CannotListen, cannot_listen
from isdr.scp.spool import discard, spool_large_data_sets, spool_problem
from isdr.scp.tuning import tune_connection

logger = logging.getLogger(__name__)

ABORT_SECONDS = 1.0
ALWAYS_HEARD = 64 << 20  # bytes of a data set taken in whatever the disk's room
STATUS_SUCCESS = 0x0000
REJECTED_PERMANENT, REJECTED_TRANSIENT = 0x01, 0x02  # A-ASSOCIATE-RJ result
SERVICE_USER = 0x01  # A-ASSOCIATE-RJ source
# Source: the service provider (presentation related); reason: local limit exceeded.
LOCAL_LIMIT_EXCEEDED = (REJECTED_TRANSIENT, 0x03, 0x02)
STATUS_PROCESSING_FAILURE = 0xC211
# Explicit VR first: pynetdicom accepts the first of these that the sender proposes, and
# a sender that proposes both should not be made to transcode to implicit VR.
UNCOMPRESSED = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
TRANSFER_SYNTAXES = UNCOMPRESSED + [ts for ts in AllTransferSyntaxes if ts not in UNCOMPRESSED]


@dataclass(frozen=True)
class ReceiveLimits:
    """What a sender may take of the relay: time, connections and bytes."""

    associate_timeout: float  # SCP_ASSOCIATE_TIMEOUT
    network_timeout: float  # SCP_NETWORK_TIMEOUT
    connections: ConnectionLimits
    max_instance_bytes: int  # MAX_INSTANCE_MB


# The Settings' defaults (tests/unit/test_config.py holds them together), for a Store SCP
# built without settings.
DEFAULT_LIMITS = ReceiveLimits(10.0, 120.0, ConnectionLimits(128, 32, 64), 2048 << 20)


@dataclass
class AssociationStats:
    """What one association did, for its closing log line."""

    calling_ae_title: str
    peer: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    bytes: int = 0
    echo_only: bool = False  # Verification alone (health checks): logged at DEBUG
    # Names the association in the rounds it sends: their end may complete them.
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)


class StoreSCP:
    """A Store and Verification SCP bound to an Ingestor."""

    def __init__(
        self,
        ingestor: Ingestor,
        *,
        ae_title: str,
        host: str,
        port: int,
        max_pdu: int,
        policy: AccessPolicy | None = None,
        tls: ssl.SSLContext | None = None,
        limits: ReceiveLimits = DEFAULT_LIMITS,
    ) -> None:
        self.ingestor = ingestor
        self.policy = policy or AccessPolicy()
        self.tls = tls
        self.limits = limits
        self.address = (host, port)
        self.ae = _make_ae(ae_title, max_pdu, limits)
        self.connections = ConnectionTable(limits.connections)
        self._refusals = Throttle()
        self._server: Any = None
        self._lock = threading.Lock()
        self._stats: dict[int, AssociationStats] = {}
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)

    @property
    def port(self) -> int:
        """The port actually listened on (useful when started with port 0)."""
        return int(self._server.server_address[1]) if self._server else self.address[1]

    @property
    def listening(self) -> bool:
        """Whether it listens (started and not stopped)."""
        return self._server is not None

    def associations(self) -> int:
        """Associations open now."""
        return self.connections.associations()

    def start(self) -> None:
        """Start listening in background threads."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, _on_echo),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        try:
            server = self.ae.make_server(
                self.address, evt_handlers=handlers, server_class=_Acceptor
            )
        except OSError as exc:
            raise CannotListen(cannot_listen(*self.address, exc)) from exc
        assert isinstance(server, _Acceptor)
        server.tls = self.tls
        server.admission = self._admit
        self.ae._servers.append(server)  # as start_server does: its shutdown removes it
        threading.Thread(target=server.serve_forever, name="isdr-scp-accept", daemon=True).start()
        self._server = server
        logger.info(
            "Store SCP %s listening on %s:%d%s", self.ae.ae_title, self.address[0], self.port,
            "" if self.tls is None else " (TLS only"
            + (", client certificates required)" if _asks_client_cert(self.tls) else ")"),
        )  # fmt: skip

    def stop(self, timeout: float) -> None:
        """Stop accepting, let C-STOREs in flight finish (up to `timeout`), then close."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        with self._idle:
            finished = self._idle.wait_for(lambda: self._in_flight == 0, timeout)
        open_associations = server.active_associations
        _cut(open_associations, ABORT_SECONDS)
        logger.info(
            "Store SCP stopped (%d association(s) cut after their C-STOREs%s)",
            len(open_associations),
            "" if finished else "; some C-STOREs did not finish in time",
        )

    def _admit(self, sock: socket.socket, peer: str) -> bool:
        """Whether a connection just accepted may go on (in the accepting thread, before
        any thread is made for it); waiting connections in its way are closed."""
        admission = self.connections.admit(sock, peer, time.monotonic())
        for gone in admission.evict:
            _close_waiting(*self.connections.release(gone.key))
            self._log_refusal(
                gone.peer,
                "made room",
                "a connection that had not associated was closed to make room for another",
            )
        if admission.refusal is not None:
            self._log_refusal(peer, "refused", f"connection refused: {admission.refusal}")
        return admission.refusal is None

    def _log_refusal(self, peer: str, kind: str, what: str) -> None:
        self._warn_once_a_minute(peer, kind, f"{peer}: {what}")

    def _warn_once_a_minute(self, peer: str, kind: str, line: str) -> None:
        """A WARNING line of this kind for this peer, unless one went out less than a
        minute ago (then it is counted, and the count goes with the next)."""
        held = self._refusals.due(f"{peer} {kind}", time.monotonic())
        if held is not None:
            more = f" ({held} more like it in the last minute)" if held else ""
            logger.warning("%s%s", line, more)

    def _log_ended_waiting(self, association: Any, why: str) -> None:
        requestor = association.requestor
        self._warn_once_a_minute(
            str(requestor.address),
            "ended waiting",
            f"connection from {requestor.address}:{requestor.port} ended before an "
            f"association: {why}",
        )

    def _on_open(self, event: Any) -> None:
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if not self.connections.attach(sock, event.assoc):
            _close_waiting(sock, event.assoc)  # evicted before its thread began
            return
        tune_connection(
            event.assoc,
            self._wire_limits(),
            self.limits.network_timeout,
            lambda: self._ended_waiting(event.assoc),
        )
        spool_large_data_sets(event.assoc, self.ingestor.writer.staging or self.ingestor.root)
        if isinstance(sock, ssl.SSLSocket):
            peer = str(event.assoc.requestor.address)
            failure = _handshake(sock, self.limits.associate_timeout)
            if failure is not None:
                line = f"TLS handshake with {peer} failed ({failure}): connection closed"
                self._warn_once_a_minute(peer, "TLS", line)

    def _ended_waiting(self, association: Any) -> None:
        """The guard ended a connection before its association: say why, and wake the
        association's thread (it would wait out SCP_ASSOCIATE_TIMEOUT for a request)."""
        guard = guard_of(association)
        if guard is not None and guard.problem is not None and not guard.reported:
            guard.reported = True
            self._log_ended_waiting(association, guard.problem)
        _wake_waiting(association)

    def _wire_limits(self) -> WireLimits:
        return WireLimits(
            max_pdata=int(self.ae.maximum_pdu_size or 0),
            associate_timeout=self.limits.associate_timeout,
            pdu_timeout=self.limits.network_timeout,
            max_data_set=self._room_for_an_instance,
        )

    def _room_for_an_instance(self) -> int:
        """The most bytes a data set may have now: MAX_INSTANCE_MB, or what the disk
        holds above its reserve when that is less. Up to ALWAYS_HEARD bytes are always
        heard out, so that a sender to a full disk gets its 0xA700 answer."""
        room = max(self.ingestor.writer.room(), ALWAYS_HEARD)
        return min(self.limits.max_instance_bytes, room)

    def _on_requested(self, event: Any) -> None:
        """Who may send: a refused association gets an A-ASSOCIATE-RJ with the reason."""
        request = event.assoc.requestor.primitive
        address = str(event.assoc.requestor.address)
        policy = self.policy
        if _is_health_check(event.assoc, address):
            policy = policy.for_health_check()
        refusal = policy.refusal(
            str(request.calling_ae_title), str(request.called_ae_title), address
        )
        if refusal is not None:
            logger.warning("association from %s refused: %s", address, refusal.reason)
            _reject(event.assoc, REJECTED_PERMANENT, SERVICE_USER, refusal.diagnostic)
            return
        too_many = self.connections.associate(event.assoc)
        if too_many is not None:
            _reject(event.assoc, *LOCAL_LIMIT_EXCEEDED)
            self._log_refusal(address, "too many", f"association refused: {too_many}")

    def _on_accepted(self, event: Any) -> None:
        requestor = event.assoc.requestor
        accepted = event.assoc.accepted_contexts
        stats = AssociationStats(
            requestor.ae_title,
            f"{requestor.address}:{requestor.port}",
            echo_only=bool(accepted) and all(c.abstract_syntax == VERIFICATION for c in accepted),
        )
        with self._lock:
            self._stats[id(event.assoc)] = stats
        refused = _refused_contexts(event.assoc.rejected_contexts)
        if accepted:
            logger.log(
                logging.DEBUG if stats.echo_only else logging.INFO,
                "association from %s at %s accepted",
                stats.calling_ae_title,
                stats.peer,
            )
            if refused:  # senders often propose every storage class they know
                logger.debug("presentation contexts refused to %s: %s", stats.peer, refused)
        else:
            logger.warning(
                "association from %s at %s has nothing to send here: no presentation context "
                "accepted, for %s",
                stats.calling_ae_title,
                stats.peer,
                refused,
            )

    def _on_close(self, event: Any) -> None:
        self.connections.release_association(event.assoc)
        with self._lock:
            stats = self._stats.pop(id(event.assoc), None)
        ending = how_it_ended(event.assoc, stopping=self._server is None)
        cut_off, event.assoc.dimse.message = event.assoc.dimse.message, None
        if cut_off is not None:  # an instance cut off: its bytes go now
            discard(cut_off.data_set)
        guard = guard_of(event.assoc)
        if stats is not None:
            _log_summary(stats, ending)
            if ending is None and stats.stored:
                guarded(logger, "recording an association's release",
                        self.ingestor.association_released, stats.uid)  # fmt: skip
        elif ending is not None and not (guard is not None and guard.reported):
            self._log_ended_waiting(event.assoc, ending)

    def _on_store(self, event: Any) -> int | Dataset:
        with self._lock:
            self._in_flight += 1
            stats = self._stats.get(id(event.assoc)) or AssociationStats("", "")
        guard = guard_of(event.assoc)
        if guard is not None:
            guard.busy = True  # its reader must not doze off while the answer is made
        try:
            return self._store(event, stats)
        finally:
            if guard is not None:  # awake a while longer: the answer is still to go out
                guard.busy, guard.last_data = False, time.monotonic()
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _store(self, event: Any, stats: AssociationStats) -> int | Dataset:
        request = event.request
        data = request.DataSet.getbuffer()
        size = data.nbytes
        try:
            problem = spool_problem(request.DataSet)
            if problem is not None:
                raise InstanceRejected(STATUS_OUT_OF_RESOURCES, problem)
            recorded = self.ingestor.store_received(
                data,
                str(event.context.transfer_syntax),
                str(request.AffectedSOPClassUID),
                stats.calling_ae_title,
                stats.peer,
                str(request.AffectedSOPInstanceUID or ""),
                stats.uid,
            )
        except InstanceRejected as exc:
            stats.refused += 1
            logger.warning(
                "refused instance %s from %s at %s: %s (status 0x%04X)",
                request.AffectedSOPInstanceUID,
                stats.calling_ae_title,
                stats.peer,
                exc.reason,
                exc.status,
            )
            return _failure(exc.status, exc.reason)
        except Exception:  # noqa: BLE001 (the top of a handler: one fails, the rest go on)
            stats.refused += 1
            log_exception(
                logger,
                f"could not store instance {request.AffectedSOPInstanceUID} from {stats.peer}",
            )
            return _failure(STATUS_PROCESSING_FAILURE, "internal error while storing")
        finally:
            data.release()
            discard(request.DataSet)
        stats.bytes += size
        if recorded.duplicate:
            stats.duplicates += 1
        else:
            stats.stored += 1
        return STATUS_SUCCESS


def _cut(associations: list[Any], seconds: float) -> None:
    """End associations now: their sockets are shut (waking a thread blocked on a read of
    a peer that went silent), then they are aborted in parallel, all within `seconds`."""
    for assoc in associations:
        sock = getattr(assoc.dul.socket, "socket", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    threads = [threading.Thread(target=assoc.abort, daemon=True) for assoc in associations]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


class _Acceptor(ThreadedAssociationServer):
    """pynetdicom's server, but a TLS handshake happens in the association's own thread,
    and a connection is admitted (or not) before a thread is made for it.

    pynetdicom wraps each accepted socket in its accepting thread, where the handshake
    would run: one peer that connects and says nothing would hold every other sender.
    """

    tls: ssl.SSLContext | None = None
    admission: Callable[[socket.socket, str], bool] = staticmethod(lambda sock, peer: True)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.tls is not None:
            client = self.tls.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.admission(request, str(client_address[0])):
            super().process_request(request, client_address)
        else:
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An error serving one connection: logged in the relay's format, not printed."""
        log_exception(logger, f"unexpected error with a connection from {client_address}")


def _close_waiting(sock: Any, association: Any) -> None:
    """Close a connection that has not associated, and wake its association's thread
    (which would otherwise wait out SCP_ASSOCIATE_TIMEOUT for a request)."""
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    if association is not None:
        _wake_waiting(association)


def _wake_waiting(association: Any) -> None:
    """Tell an association's thread, waiting for an A-ASSOCIATE-RQ, that none is coming."""
    association.dul.to_user_queue.put(None)


def _reject(association: Any, result: int, source: int, reason: int) -> None:
    association.acse.send_reject(result, source, reason)
    association.kill()  # returns once the A-ASSOCIATE-RJ is out (as pynetdicom's own)


def _handshake(sock: ssl.SSLSocket, seconds: float) -> str | None:
    """The TLS handshake (within `seconds`); on failure the connection is closed, so
    pynetdicom sees a peer that went away, and the reason returned."""
    timeout = sock.gettimeout()
    sock.settimeout(seconds)
    try:
        sock.do_handshake()
    except (OSError, ValueError) as exc:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        return exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else repr(exc)
    finally:
        sock.settimeout(timeout)
    return None


def _asks_client_cert(context: ssl.SSLContext) -> bool:
    return context.verify_mode == ssl.CERT_REQUIRED


def _make_ae(ae_title: str, max_pdu: int, limits: ReceiveLimits) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    # pynetdicom counts waiting connections as associations; ConnectionTable counts them
    # apart, so pynetdicom's own bound must never be the one met.
    ae.maximum_associations = 2 * limits.connections.total + 64  # closed ones wind down
    ae.acse_timeout = limits.associate_timeout  # waiting for the A-ASSOCIATE-RQ
    ae.dimse_timeout = limits.network_timeout
    ae.network_timeout = limits.network_timeout
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, UNCOMPRESSED)
    return ae


def _is_health_check(assoc: Any, address: str) -> bool:
    """The relay's own `isdr echo` (see isdr.domain.access.is_health_check)."""
    request = assoc.requestor.primitive
    proposed = [str(c.abstract_syntax) for c in request.presentation_context_definition_list]
    calling = str(request.calling_ae_title)
    return is_health_check(calling, address, _local_address(assoc), proposed)


def _local_address(assoc: Any) -> str:
    """The address of ours the peer connected to."""
    sock = getattr(assoc.dul.socket, "socket", None)
    try:
        return str(sock.getsockname()[0]) if sock is not None else ""
    except OSError:
        return ""


def _on_echo(event: Any) -> int:
    return STATUS_SUCCESS


def _failure(status: int, reason: str) -> Dataset:
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = reason[:64]
    return answer


def _refused_contexts(contexts: list[Any]) -> str:
    """The SOP classes of refused presentation contexts, with why, for a log line."""
    reasons = {0x01: "refused", 0x02: "refused", 0x03: "not supported", 0x04: "no transfer syntax"}
    return ", ".join(
        f"{context.abstract_syntax} ({reasons.get(context.result, 'refused')})"
        for context in contexts
    )


def _log_summary(stats: AssociationStats, ending: str | None) -> None:
    """The association's one closing line: a warning when it ended abnormally; at DEBUG
    for a C-ECHO alone (a health check every 30 s is not news)."""
    seconds = max(time.monotonic() - stats.started, 1e-6)
    quiet = logging.DEBUG if stats.echo_only else logging.INFO
    logger.log(
        logging.WARNING if ending else quiet,
        "association from %s at %s %s: %d stored, %d duplicate, %d refused, "
        "%.1f MB in %.1f s (%.1f MB/s)",
        stats.calling_ae_title,
        stats.peer,
        f"ended abnormally ({ending})" if ending else "closed",
        stats.stored,
        stats.duplicates,
        stats.refused,
        stats.bytes / 1e6,
        seconds,
        stats.bytes / 1e6 / seconds,
    )
