"""The Store SCP against real senders on loopback: dcmtk's storescu and pynetdicom."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.presentation import StoragePresentationContexts

from isdr.app import Relay, build_relay
from isdr.config import Settings
from isdr.db.engine import make_engine
from isdr.db.series import list_series
from isdr.scp.ingest import Ingestor
from isdr.scp.server import StoreSCP
from isdr.scp.storage import AtomicWriter
from isdr.synthetic import SeriesSpec, make_instance, write_series
from tests.helpers import dataset_part, relay_settings, send_datasets, stored_files

pytestmark = pytest.mark.usefixtures("dcmtk")
ENV = {**os.environ, "TCP_NODELAY": "1"}


def storescu(
    relay: Relay, *paths: Path, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    command = [
        "storescu",
        "-aet",
        "STORESCU",
        "-aec",
        relay.settings.SCP_AE_TITLE,
        *extra,
        "127.0.0.1",
        str(relay.scp.port),
        *map(str, paths),
    ]
    return subprocess.run(
        command, env=ENV, capture_output=True, text=True, timeout=120, check=False
    )


def by_sop_uid(paths: list[Path]) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def test_storescu_series_in_one_association_are_stored_byte_for_byte(
    relay: Relay, tmp_path: Path
) -> None:
    sent = write_series(tmp_path / "ct", SeriesSpec(modality="CT", count=5, rows=128, columns=128))
    sent += write_series(tmp_path / "mr", SeriesSpec(modality="MR", count=7))
    result = storescu(relay, *sent)
    assert result.returncode == 0, result.stderr
    stored = by_sop_uid(stored_files(relay.settings.INCOMING_DIR))
    assert set(stored) == set(by_sop_uid(sent))
    for uid, original in by_sop_uid(sent).items():
        assert dataset_part(stored[uid]) == dataset_part(original)
    counts = sorted(
        (s.modality, s.instance_count, s.calling_ae_title) for s in list_series(relay.engine)
    )
    assert counts == [("CT", 5, "STORESCU"), ("MR", 7, "STORESCU")]


def test_parallel_associations_each_store_their_series(relay: Relay, tmp_path: Path) -> None:
    series = [
        write_series(tmp_path / f"s{i}", SeriesSpec(modality="MR", count=10)) for i in range(4)
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda paths: storescu(relay, *paths), series))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert len(stored_files(relay.settings.INCOMING_DIR)) == 40
    assert sorted(s.instance_count for s in list_series(relay.engine)) == [10, 10, 10, 10]


@pytest.mark.parametrize(
    ("tool", "propose", "syntax"),
    [
        (["dcmcrle"], "-xr", "1.2.840.10008.1.2.5"),
        (["dcmcjpls"], "-xt", "1.2.840.10008.1.2.4.80"),
        (["dcmcjpeg"], "-xs", "1.2.840.10008.1.2.4.70"),
        (["dcmconv", "+td"], "-xd", "1.2.840.10008.1.2.1.99"),
    ],
)
def test_a_compressed_series_is_stored_as_received(
    relay: Relay, tmp_path: Path, tool: list[str], propose: str, syntax: str
) -> None:
    plain = write_series(tmp_path / "plain", SeriesSpec(modality="CT", count=3))
    packed = []
    for path in plain:
        target = tmp_path / f"{path.stem}.{tool[0]}.dcm"
        subprocess.run([*tool, str(path), str(target)], check=True, capture_output=True)
        packed.append(target)
    result = storescu(relay, *packed, extra=(propose,))
    assert result.returncode == 0, result.stderr
    stored = by_sop_uid(stored_files(relay.settings.INCOMING_DIR))
    for uid, original in by_sop_uid(packed).items():
        assert dcmread(stored[uid]).file_meta.TransferSyntaxUID == syntax
        received, sent = dataset_part(stored[uid]), dataset_part(original)
        # A deflated stream of odd length travels padded with one zero byte to an even length.
        assert received in (sent, sent + b"\x00")


def test_pynetdicom_sender_gets_success_and_files_match(relay: Relay) -> None:
    spec = SeriesSpec(modality="MR", count=4)
    datasets = [make_instance(spec, i, "1.2.826.0.1.1", "1.2.826.0.1.1.1") for i in range(4)]
    assert send_datasets(relay.scp.port, datasets, ae_title="ISDR_TEST") == [0, 0, 0, 0]
    assert len(stored_files(relay.settings.INCOMING_DIR)) == 4


def test_a_broken_instance_is_refused_and_the_others_are_stored(relay: Relay) -> None:
    spec = SeriesSpec(modality="MR", count=5)
    datasets = [make_instance(spec, i, "1.2.826.0.1.2", "1.2.826.0.1.2.1") for i in range(5)]
    del datasets[2].SeriesInstanceUID
    statuses = send_datasets(relay.scp.port, datasets, ae_title="ISDR_TEST")
    assert statuses[:2] == [0, 0] and statuses[3:] == [0, 0]
    assert statuses[2] == 0xC212, "missing SeriesInstanceUID is refused as such"
    assert len(stored_files(relay.settings.INCOMING_DIR)) == 4
    assert list_series(relay.engine)[0].instance_count == 4


def test_a_duplicate_instance_is_stored_once_and_answered_success(relay: Relay) -> None:
    ds = make_instance(SeriesSpec(), 0, "1.2.826.0.1.3", "1.2.826.0.1.3.1")
    assert send_datasets(relay.scp.port, [ds, ds], ae_title="ISDR_TEST") == [0, 0]
    assert send_datasets(relay.scp.port, [ds], ae_title="ISDR_TEST") == [0]
    assert len(stored_files(relay.settings.INCOMING_DIR)) == 1
    assert list_series(relay.engine)[0].instance_count == 1


def test_a_follow_up_study_with_identical_descriptions_gets_its_own_folder(relay: Relay) -> None:
    spec = SeriesSpec(study_description="Thorax", series_description="Axial")
    first = make_instance(spec, 0, "1.2.826.0.1.4", "1.2.826.0.1.4.1")
    follow_up = make_instance(spec, 0, "1.2.826.0.1.5", "1.2.826.0.1.5.1")
    assert send_datasets(relay.scp.port, [first, follow_up], ae_title="ISDR_TEST") == [0, 0]
    folders = {p.parent for p in stored_files(relay.settings.INCOMING_DIR)}
    assert len(folders) == 2
    assert len(list_series(relay.engine)) == 2


def test_hostile_tag_values_stay_inside_incoming_dir(relay: Relay, tmp_path: Path) -> None:
    spec = SeriesSpec(
        patient_id="../../escaped",
        study_description="/etc",
        series_description="..\\..\\x" + "y" * 60,
    )
    ds = make_instance(spec, 0, "1.2.826.0.1.6", "1.2.826.0.1.6.1")
    ds.Modality = "../"
    ds.SOPInstanceUID = "../../../sop"
    assert send_datasets(relay.scp.port, [ds], ae_title="ISDR_TEST") == [0]
    [stored] = stored_files(relay.settings.INCOMING_DIR)
    assert stored.resolve().is_relative_to(relay.settings.INCOMING_DIR.resolve())
    assert not (tmp_path / "escaped").exists()


def test_a_full_disk_answers_out_of_resources_and_writes_nothing(tmp_path: Path) -> None:
    relay = build_relay(relay_settings(tmp_path, MIN_FREE_DISK_MB=2**40))
    relay.start()
    try:
        ds = make_instance(SeriesSpec(), 0, "1.2.826.0.1.7", "1.2.826.0.1.7.1")
        assert send_datasets(relay.scp.port, [ds], ae_title="ISDR_TEST") == [0xA700]
        assert list(relay.settings.INCOMING_DIR.rglob("*")) == []
        assert list_series(relay.engine) == []
    finally:
        relay.stop()


def test_echo_is_answered(relay: Relay) -> None:
    result = subprocess.run(
        ["echoscu", "-aec", relay.settings.SCP_AE_TITLE, "127.0.0.1", str(relay.scp.port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    ae = AE()
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", relay.scp.port, ae_title=relay.settings.SCP_AE_TITLE)
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_pynetdicom_senders_in_parallel_associations_store_every_series(relay: Relay) -> None:
    def one_series(index: int) -> list[int]:
        spec = SeriesSpec(modality="CT", count=6, series_description=f"part {index}")
        study, series = "1.2.826.0.1.9", f"1.2.826.0.1.9.{index}"
        datasets = [make_instance(spec, i, study, series) for i in range(6)]
        return send_datasets(
            relay.scp.port, datasets, ae_title="ISDR_TEST", calling=f"SENDER{index}"
        )

    with ThreadPoolExecutor(3) as pool:
        statuses = list(pool.map(one_series, range(3)))
    assert statuses == [[0] * 6] * 3
    rows = list_series(relay.engine)
    assert sorted((s.instance_count, s.calling_ae_title) for s in rows) == [
        (6, "SENDER0"),
        (6, "SENDER1"),
        (6, "SENDER2"),
    ]
    assert len({s.folder for s in rows}) == 3


def test_a_resend_with_a_corrected_patient_id_replaces_the_earlier_file(relay: Relay) -> None:
    ds = make_instance(SeriesSpec(patient_id="WRONG-1"), 0, "1.2.826.0.1.10", "1.2.826.0.1.10.1")
    assert send_datasets(relay.scp.port, [ds]) == [0]
    ds.PatientID = "RIGHT-1"
    assert send_datasets(relay.scp.port, [ds]) == [0]
    [stored] = stored_files(relay.settings.INCOMING_DIR)
    assert stored.relative_to(relay.settings.INCOMING_DIR).parts[0] == "RIGHT-1"
    [series] = list_series(relay.engine)
    assert series.instance_count == 1


# --- a database that cannot take the record ---------------------------------------


@contextmanager
def impatient_scp(settings: Settings) -> Iterator[StoreSCP]:
    """The relay's Store SCP on a database whose writers wait 0.2 s for a lock, not 60 s."""
    writer = AtomicWriter(settings.INCOMING_DIR, fsync=False, min_free_bytes=0)
    engine = make_engine(settings.database_url, busy_timeout=0.2)
    scp = StoreSCP(
        Ingestor(settings.INCOMING_DIR, writer, engine),
        ae_title=settings.SCP_AE_TITLE, host="127.0.0.1", port=0, max_pdu=settings.MAX_PDU_SIZE,
    )  # fmt: skip
    scp.start()
    try:
        yield scp
    finally:
        scp.stop(5)
        engine.dispose()


@contextmanager
def database_locked(settings: Settings) -> Iterator[sqlite3.Connection]:
    """Another process's writer holding the database: BEGIN EXCLUSIVE, until the end."""
    holder = sqlite3.connect(settings.DATA_DIR / "isdr.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield holder
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def answers(port: int, datasets: list[Dataset]) -> list[tuple[int, str]]:
    """(status, error comment) of each C-STORE, sent by pynetdicom in one association."""
    ae = AE(ae_title="PYNET")
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", port, ae_title="ISDR_TEST")
    assert assoc.is_established
    try:
        return [
            (int(answer.Status), str(answer.get("ErrorComment", "")))
            for answer in (assoc.send_c_store(ds) for ds in datasets)
        ]
    finally:
        assoc.release()


def test_a_locked_database_answers_out_of_resources_and_keeps_no_file(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path)
    ds = make_instance(SeriesSpec(), 0, "1.2.826.0.1.11", "1.2.826.0.1.11.1")
    settings.DATA_DIR.mkdir(parents=True)
    with impatient_scp(settings) as scp, database_locked(settings):
        [(status, comment)] = answers(scp.port, [ds])
        assert status == 0xA700, "Out of resources: the sender sends it again later"
        assert comment == "the database is locked by another writer: not stored"
        assert list(settings.INCOMING_DIR.rglob("*.dcm")) == [], "told failed, not kept"
    relay = build_relay(settings)
    relay.start()  # the next start finds nothing to record
    try:
        assert list_series(relay.engine) == []
        assert send_datasets(relay.scp.port, [ds]) == [0], "the resend is stored"
        assert [s.instance_count for s in list_series(relay.engine)] == [1]
    finally:
        relay.stop()


def test_a_resend_refused_for_a_locked_database_leaves_the_copy_stored_before(
    tmp_path: Path,
) -> None:
    settings = relay_settings(tmp_path)
    ds = make_instance(SeriesSpec(), 0, "1.2.826.0.1.12", "1.2.826.0.1.12.1")
    settings.DATA_DIR.mkdir(parents=True)
    with impatient_scp(settings) as scp:
        assert answers(scp.port, [ds])[0][0] == 0
        [stored] = stored_files(settings.INCOMING_DIR)
        first = stored.read_bytes()
        ds.SeriesDescription = "corrected"  # the same instance, to the same file
        with database_locked(settings):
            assert answers(scp.port, [ds])[0][0] == 0xA700
        assert stored_files(settings.INCOMING_DIR) == [stored]
        assert stored.read_bytes() == first, "the copy that got Success is still there"
        assert [p.name for p in settings.INCOMING_DIR.rglob(".*")] == []


def test_an_unexpected_database_error_answers_processing_failure_and_keeps_no_file(
    tmp_path: Path,
) -> None:
    settings = relay_settings(tmp_path)
    ds = make_instance(SeriesSpec(), 0, "1.2.826.0.1.13", "1.2.826.0.1.13.1")
    settings.DATA_DIR.mkdir(parents=True)
    with impatient_scp(settings) as scp:
        with sqlite3.connect(settings.DATA_DIR / "isdr.sqlite3") as broken:
            broken.execute("ALTER TABLE instance RENAME TO instance_gone")
        assert answers(scp.port, [ds]) == [(0xC211, "internal error while storing")]
        assert list(settings.INCOMING_DIR.rglob("*.dcm")) == []
