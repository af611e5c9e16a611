"""`isdr demo`: the whole loop on this machine in under a minute, with nothing outside.

It starts the relay (in a temporary folder, on a free port), a stand-in InferenceServer
over HTTPS whose toy model answers a series with a derived series, and a destination
Store SCP; sends a synthetic CT series (no patient data), waits for the predictions to
be delivered, and prints the job's timeline and where the predictions landed.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TextIO

from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.presentation import StoragePresentationContexts

from isdr.app import Relay, build_relay
from isdr.config import Settings
from isdr.db.delivery import job_details
from isdr.db.jobs import list_jobs, timeline
from isdr.db.views import JobView
from isdr.demo.destination import DESTINATION_AE, Destination, free_port
from isdr.demo.standin import StandIn
from isdr.logs import configure_logging
from isdr.synthetic import SeriesSpec, make_instance

MODEL = "demo-model"
INSTANCES = 10
DEADLINE = 60.0


def run_demo(out: TextIO) -> int:
    """Run the demo; 0 when the predictions were delivered."""
    with tempfile.TemporaryDirectory(prefix="isdr-demo-") as temp:
        work = Path(temp)
        standin = StandIn(work, models=(MODEL,)).start()
        standin.output_count = INSTANCES  # the toy model derives one image per image
        destination = Destination(work / "pacs").start()
        settings = _settings(work, standin)
        _write_fingerprint(settings, standin, destination)
        configure_logging(settings)
        relay = build_relay(settings)
        relay.start()
        try:
            return _show(out, relay, destination, _send_series(settings))
        finally:
            relay.stop()
            destination.stop()
            standin.stop()


def _settings(work: Path, standin: StandIn) -> Settings:
    return Settings(
        SCP_HOSTNAME="127.0.0.1", SCP_PORT=free_port(), SCP_AE_TITLE="ISDR_DEMO", HTTP_PORT=0,
        DATA_DIR=work / "data", INCOMING_DIR=work / "data" / "incoming",
        FINGERPRINT_DIR=work / "fingerprints", CERT_FILE=standin.ca_file,
        POST_AFTER=2, POST_INTERVAL=0.5, GET_INTERVAL=1, MIN_FREE_DISK_MB=0,
    )  # fmt: skip


def _write_fingerprint(settings: Settings, standin: StandIn, destination: Destination) -> None:
    settings.FINGERPRINT_DIR.mkdir(parents=True)
    fingerprint = {
        "description": "isdr demo: every CT series to the stand-in's toy model",
        "modality_regex": "^CT$",
        "inference_server_url": standin.url_v2,
        "inference_server_api": 2,
        "model_human_readable_id": MODEL,
        "scus": [
            {"scu_ip": "127.0.0.1", "scu_port": destination.port, "scu_ae_title": DESTINATION_AE}
        ],
    }
    (settings.FINGERPRINT_DIR / "demo.json").write_text(json.dumps(fingerprint, indent=2))


def _send_series(settings: Settings) -> float:
    """Send a synthetic CT series to the relay; the time it took."""
    spec = SeriesSpec(count=INSTANCES, rows=128, columns=128, series_description="Demo CT")
    study, series = str(generate_uid()), str(generate_uid())
    began = time.monotonic()
    ae = AE(ae_title="DEMO_CT")
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", settings.SCP_PORT, ae_title=settings.SCP_AE_TITLE)
    if not assoc.is_established:
        raise RuntimeError("the relay did not accept the demo's association")
    try:
        for index in range(INSTANCES):
            assoc.send_c_store(make_instance(spec, index, study, series))
    finally:
        assoc.release()
    return time.monotonic() - began


def _show(out: TextIO, relay: Relay, destination: Destination, sent_in: float) -> int:
    job = _wait_for_job(relay)
    print(f"\n--- isdr demo: {INSTANCES} CT instances sent in {sent_in:.1f} s", file=out)
    if job is None:
        print("no job ended within a minute: see the log lines above", file=out)
        return 1
    found = timeline(relay.engine, job.id)
    for event in found[1] if found else []:
        print(f"  {event.at:%H:%M:%S}  {event.state:<10}  {event.message}", file=out)
    deliveries, outputs = job_details(relay.engine, job.id)
    for delivery in deliveries:
        print(f"  to {delivery.destination}: {delivery.state}, {delivery.confirmed} file(s)",
              file=out)  # fmt: skip
    landed = sorted(destination.folder.glob("*.dcm"))
    print(f"job {job.id} is {job.state}; {len(landed)} prediction file(s) landed in the "
          f"destination (a folder the demo removes when it ends)", file=out)  # fmt: skip
    if outputs.kept:
        print(f"kept, not DICOM: {', '.join(outputs.kept)}", file=out)
    return 0 if job.state == "delivered" and landed else 1


def _wait_for_job(relay: Relay) -> JobView | None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        jobs = list_jobs(relay.engine)
        if jobs and jobs[0].state in ("delivered", "failed") and _delete_tried(jobs[0]):
            return jobs[0]
        time.sleep(0.2)
    return None


def _delete_tried(job: JobView) -> bool:
    """Whether the remote delete (when one is due) has had its first try."""
    return job.remote_delete_due_at is None or bool(job.remote_delete_attempts)
