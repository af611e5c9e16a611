"""DICOM over TLS: the Store SCP with certificates from trustme, against dcmtk's
`storescu +tls` and pynetdicom; plain senders and silent peers are refused, one log line."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from pydicom import dcmread

from isdr.app import Relay, build_relay
from isdr.db.series import list_series
from isdr.demo.standin import StandIn
from isdr.domain.destination import Destination, DestinationTls
from isdr.scu.echo import echo
from isdr.scu.sender import SendOptions, send_files
from isdr.synthetic import SeriesSpec, write_series
from isdr.tls import self_check_context
from tests.helpers import relay_settings, stored_files
from tests.integration.test_delivery_flow import (
    FAST,
    fingerprint,
    receive_ct,
    to,
    wait_for_state,
    wait_until,
)
from tests.integration.test_sender import files_of
from tests.peers import Storescp

pytestmark = pytest.mark.usefixtures("dcmtk")


@dataclass(frozen=True)
class Pki:
    """A CA, the relay's server certificate, and a sender's client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by another CA
    stranger_key: Path


def _issue(ca: trustme.CA, folder: Path, name: str, *identities: str) -> tuple[Path, Path]:
    cert = ca.issue_cert(*identities)
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server = _issue(ca, folder, "server", "127.0.0.1", "localhost")
    client = _issue(ca, folder, "client", "storescu.example.org")
    stranger = _issue(trustme.CA(), folder, "stranger", "stranger.example.org")
    return Pki(folder / "ca.pem", *server, *client, *stranger)


@pytest.fixture
def tls_relay(tmp_path: Path, pki: Pki) -> Iterator[Relay]:
    settings = relay_settings(
        tmp_path,
        SCP_TLS_CERT_FILE=str(pki.server_cert),
        SCP_TLS_KEY_FILE=str(pki.server_key),
        SCP_TLS_CLIENT_CA_FILE=str(pki.ca),
    )
    running = build_relay(settings)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def handshake_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The relay's lines about failed TLS handshakes, once there is one: the relay writes it
    after its alert has gone, so the sender may have exited before."""
    wait_until(lambda: any("TLS handshake" in r.getMessage() for r in caplog.records))
    return [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]


def storescu(relay: Relay, paths: list[Path], *tls: str) -> subprocess.CompletedProcess[str]:
    command = [
        "storescu", *tls, "-aet", "STORESCU", "-aec", relay.settings.SCP_AE_TITLE,
        "127.0.0.1", str(relay.scp.port), *map(str, paths),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def tls_options(pki: Pki, cert: Path, key: Path) -> tuple[str, ...]:
    return ("+tls", str(key), str(cert), "+cf", str(pki.ca))


def series(tmp_path: Path, name: str, count: int = 3) -> list[Path]:
    write_series(tmp_path / name, SeriesSpec(count=count))
    return sorted((tmp_path / name).rglob("*.dcm"))


def test_storescu_over_tls_with_a_client_certificate_is_stored(
    tls_relay: Relay, pki: Pki, tmp_path: Path
) -> None:
    sent = series(tmp_path, "ct")
    result = storescu(tls_relay, sent, *tls_options(pki, pki.client_cert, pki.client_key))
    assert result.returncode == 0, result.stderr
    assert len(stored_files(tls_relay.settings.INCOMING_DIR)) == len(sent)
    assert list_series(tls_relay.engine)[0].instance_count == len(sent)


def test_a_plain_sender_is_refused_with_one_log_line_and_tls_senders_go_on(
    tls_relay: Relay, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="isdr.scp.server")
    plain = storescu(tls_relay, series(tmp_path, "plain"))
    assert plain.returncode != 0
    good = storescu(
        tls_relay, series(tmp_path, "good"), *tls_options(pki, pki.client_cert, pki.client_key)
    )
    assert good.returncode == 0, good.stderr
    assert len(stored_files(tls_relay.settings.INCOMING_DIR)) == 3
    failures = handshake_failures(caplog)
    assert len(failures) == 1 and "127.0.0.1" in failures[0]


def test_a_client_certificate_from_another_ca_is_refused(
    tls_relay: Relay, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="isdr.scp.server")
    result = storescu(
        tls_relay, series(tmp_path, "ct"), *tls_options(pki, pki.stranger_cert, pki.stranger_key)
    )
    assert result.returncode != 0
    assert stored_files(tls_relay.settings.INCOMING_DIR) == []
    [failure] = handshake_failures(caplog)
    assert "CERTIFICATE" in failure.upper()


def test_a_sender_without_a_certificate_is_refused_when_one_is_required(
    tls_relay: Relay, pki: Pki, tmp_path: Path
) -> None:
    result = storescu(tls_relay, series(tmp_path, "ct"), "+tla", "+cf", str(pki.ca))
    assert result.returncode != 0
    assert stored_files(tls_relay.settings.INCOMING_DIR) == []


def test_a_peer_that_connects_and_says_nothing_holds_up_no_other_sender(
    tls_relay: Relay, pki: Pki, tmp_path: Path
) -> None:
    with socket.create_connection(("127.0.0.1", tls_relay.scp.port)):
        time.sleep(0.2)  # accepted, and its handshake is waiting for a ClientHello
        started = time.monotonic()
        good = storescu(
            tls_relay, series(tmp_path, "ct"), *tls_options(pki, pki.client_cert, pki.client_key)
        )
        assert good.returncode == 0, good.stderr
        assert time.monotonic() - started < 10


def test_the_health_check_echo_works_over_tls_with_client_certificates_required(
    tls_relay: Relay, pki: Pki
) -> None:
    context = self_check_context(pki.server_cert, pki.server_key)
    answer = echo("127.0.0.1", tls_relay.scp.port, tls_relay.settings.SCP_AE_TITLE, tls=context)
    assert answer.ok, answer.detail
    plain = echo("127.0.0.1", tls_relay.scp.port, tls_relay.settings.SCP_AE_TITLE, timeout=2)
    assert not plain.ok and "does the relay expect TLS" in plain.detail, plain.detail


# --- deliveries to destinations that require TLS -------------------------------------


def tls_destination(pki: Pki, port: int, ae_title: str, **tls: Any) -> dict[str, Any]:
    chosen = {
        "ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key),
    }  # fmt: skip
    return {**to(port, ae_title), "tls": {**chosen, **tls}}


@pytest.fixture
def make_relay(tmp_path: Path, standin: StandIn) -> Iterator[Callable[..., Relay]]:
    started: list[Relay] = []

    def make(**overrides: Any) -> Relay:
        settings = relay_settings(tmp_path, CERT_FILE=standin.ca_file, **{**FAST, **overrides})
        started.append(build_relay(settings))
        started[-1].start()
        return started[-1]

    yield make
    for relay in started:
        relay.stop()


@pytest.fixture
def tls_storescp(tmp_path: Path, pki: Pki) -> Iterator[Storescp]:
    options = ("+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca))
    destination = Storescp(tmp_path / "tps", ae_title="TPS", options=options).start()
    yield destination
    destination.stop()


def test_predictions_reach_a_storescp_that_requires_tls_and_a_client_certificate(
    make_relay: Callable[..., Relay], standin: StandIn, tls_storescp: Storescp, pki: Pki
) -> None:
    relay = make_relay()
    fingerprint(relay, standin, 1, [tls_destination(pki, tls_storescp.port, "TPS")])
    receive_ct(relay)
    job = wait_for_state(relay, "delivered", "failed")
    assert job.state == "delivered", job.last_error
    received = {str(dcmread(p).SOPInstanceUID) for p in tls_storescp.files()}
    assert received == set(standin.task_of().instance_uids)


def test_a_destination_whose_certificate_does_not_verify_fails_with_the_reason(
    make_relay: Callable[..., Relay], standin: StandIn, tls_storescp: Storescp, pki: Pki,
    tmp_path: Path,
) -> None:  # fmt: skip
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    relay = make_relay(DELIVERY_MAX_ATTEMPTS=1)
    scu = tls_destination(pki, tls_storescp.port, "TPS", ca_file=str(other_ca))
    fingerprint(relay, standin, 1, [scu])
    receive_ct(relay)
    job = wait_for_state(relay, "failed")
    assert job.failed_step == "deliver"
    assert "TLS handshake failed" in job.last_error and "ca_file" in job.last_error
    assert tls_storescp.files() == []


def test_a_missing_tls_file_of_a_destination_is_named_in_the_reason(
    make_relay: Callable[..., Relay], standin: StandIn, tls_storescp: Storescp, pki: Pki,
    tmp_path: Path,
) -> None:  # fmt: skip
    relay = make_relay(DELIVERY_MAX_ATTEMPTS=1)
    missing = tmp_path / "no-such-ca.pem"
    fingerprint(
        relay, standin, 1, [tls_destination(pki, tls_storescp.port, "TPS", ca_file=str(missing))]
    )
    receive_ct(relay)
    job = wait_for_state(relay, "failed")
    assert f"cannot read {missing}" in job.last_error


def test_a_destination_that_refuses_our_missing_client_certificate_says_so(
    make_relay: Callable[..., Relay], standin: StandIn, tls_storescp: Storescp, pki: Pki
) -> None:
    relay = make_relay(DELIVERY_MAX_ATTEMPTS=1)
    scu = {**to(tls_storescp.port, "TPS"), "tls": {"ca_file": str(pki.ca)}}  # no certificate
    fingerprint(relay, standin, 1, [scu])
    receive_ct(relay)
    job = wait_for_state(relay, "failed")
    assert "TLS handshake failed" in job.last_error, job.last_error
    assert tls_storescp.files() == []


class SlowLink:
    """A TCP relay on loopback to `port` that holds each thing the destination says, but the
    first, for `delay` seconds: an alert about our certificate comes at least that long after
    our side of the TLS handshake is done, as from a destination slow to check it."""

    def __init__(self, port: int, delay: float) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.target, self.delay = port, delay
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # until closed
            while True:
                near, _ = self.listener.accept()
                far = socket.create_connection(("127.0.0.1", self.target))
                self.sockets += [near, far]
                threading.Thread(target=_pump, args=(near, far, 0.0), daemon=True).start()
                threading.Thread(target=_pump, args=(far, near, self.delay), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
    with contextlib.suppress(OSError):
        sink.sendall(source.recv(65536))
        while data := source.recv(65536):
            time.sleep(delay)
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


def test_a_refusal_of_our_certificate_that_comes_late_is_named_all_the_same(
    tls_storescp: Storescp, pki: Pki, tmp_path: Path
) -> None:
    # TLS 1.3: the destination refuses our (missing) certificate after our side of the
    # handshake is done; its alert comes when it comes, here 1.5 s later.
    series(tmp_path, "ct")
    link = SlowLink(tls_storescp.port, delay=1.5)
    peer = Destination.at("127.0.0.1", link.port, "TPS", DestinationTls(ca_file=str(pki.ca)))
    try:
        report = send_files(
            peer,
            files_of(tmp_path / "ct"),
            SendOptions("ISDR_TEST", timeout=10),
            lambda _item, _status: None,
            threading.Event(),
        )
    finally:
        link.close()
    assert "TLS handshake failed" in report.error, report.error
    assert tls_storescp.files() == []
