"""Delivery benchmark: the relay's C-STORE sender against dcmtk's storescu, same files.

Run by hand, never as a test (see bench/README.md):

    .venv/bin/python bench/delivery_throughput.py              # 500 CT 512x512, 3 rounds
    .venv/bin/python bench/delivery_throughput.py --count 100 --rounds 1

A 500-instance output is written once. Each round sends it to a fresh dcmtk storescp
(its default settings, TCP_NODELAY=1) twice, in turn: with `storescu` and with the
relay's sender (isdr.scu.sender.send_files, recording every confirmed file in a SQLite
database exactly as the deliverer does). A run counts only if every file is confirmed
and on storescp's disk. Target: the relay reaches at least 0.5x storescu's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy.orm import Session  # noqa: E402

from isdr.db.delivery import confirm_file  # noqa: E402
from isdr.db.engine import make_engine  # noqa: E402
from isdr.db.models import Delivery, Job, Series  # noqa: E402
from isdr.dicom.files import describe  # noqa: E402
from isdr.domain.destination import Destination  # noqa: E402
from isdr.domain.fingerprint import Fingerprint  # noqa: E402
from isdr.scp.tuning import tune_libraries  # noqa: E402
from isdr.scu.sender import FileToSend, SendOptions, send_files  # noqa: E402
from isdr.synthetic import SeriesSpec, write_series  # noqa: E402

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def storescp(folder: Path, port: int) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True)
    process = subprocess.Popen(
        ["storescp", "--aetitle", "DEST", "-od", str(folder), str(port)], env=DCMTK_ENV
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    raise RuntimeError("storescp did not start")


def with_storescu(files: list[FileToSend], port: int) -> float:
    began = time.perf_counter()
    subprocess.run(
        ["storescu", "-aec", "DEST", "127.0.0.1", str(port), *(str(f.path) for f in files)],
        env=DCMTK_ENV, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - began


def with_relay(files: list[FileToSend], port: int, database: str, associations: int) -> float:
    engine = make_engine(database)
    delivery_id = seed_delivery(engine, port)
    began = time.perf_counter()
    report = send_files(
        Destination.at("127.0.0.1", port, "DEST"), files, SendOptions("ISDR", 10.0, associations),
        lambda item, status: confirm_file(
            engine, delivery_id, item.name, status, datetime.now(UTC)
        ),
        threading.Event(),
    )  # fmt: skip
    elapsed = time.perf_counter() - began
    engine.dispose()
    if not report.complete or report.confirmed != len(files):
        raise RuntimeError(f"the relay's sender did not deliver everything: {report}")
    return elapsed


def seed_delivery(engine: object, port: int) -> int:
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():  # type: ignore[call-overload]
        series = Series(series_instance_uid="1.2", study_instance_uid="1.2", patient_id="B",
                        folder="b", first_received_at=now, last_received_at=now)  # fmt: skip
        session.add(series)
        session.flush()
        fingerprint = Fingerprint(model_human_readable_id="b")
        job = Job(series_id=series.id, fingerprint_name="b", fingerprint=fingerprint,
                  state="delivering", next_attempt_at=now, created_at=now,
                  updated_at=now)  # fmt: skip
        session.add(job)
        session.flush()
        delivery = Delivery(job_id=job.id, position=0, host="127.0.0.1", port=port,
                            ae_title="DEST", state="sending", next_attempt_at=now,
                            updated_at=now)  # fmt: skip
        session.add(delivery)
        session.flush()
        return int(delivery.id)


def one_run(name: str, send: Callable[[int], float], work: Path, files: list[FileToSend]) -> float:
    port = free_port()
    folder = work / f"dest-{name}-{port}"
    receiver = storescp(folder, port)
    try:
        elapsed = send(port)
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    stored = sum(1 for _ in folder.iterdir())
    shutil.rmtree(folder)
    if stored != len(files):
        raise RuntimeError(f"{name}: {stored} of {len(files)} files on storescp's disk")
    return len(files) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=512, help="rows and columns")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--associations", type=int, default=1, help="DELIVERY_ASSOCIATIONS")
    opts = parser.parse_args()
    tune_libraries(pynetdicom_logging=False)
    with tempfile.TemporaryDirectory(prefix="isdr-delivery-bench-") as temp:
        work = Path(temp)
        write_series(work / "output", SeriesSpec(count=opts.count, rows=opts.size,
                                                 columns=opts.size))  # fmt: skip
        files = []
        for path in sorted((work / "output").rglob("*.dcm")):
            info = describe(work / "output", path)
            files.append(
                FileToSend(
                    info.name,
                    path,
                    info.sop_class_uid,
                    info.sop_instance_uid,
                    info.transfer_syntax_uid,
                )
            )
        megabytes = sum(f.path.stat().st_size for f in files) / 1e6
        rates: dict[str, list[float]] = {"storescu": [], "relay": []}
        for index in range(opts.rounds):
            database = f"sqlite:///{work / f'round{index}.sqlite3'}"
            rates["storescu"].append(one_run("storescu", lambda p: with_storescu(files, p), work,
                                             files))  # fmt: skip
            rates["relay"].append(one_run(
                "relay", lambda p, db=database: with_relay(files, p, db, opts.associations), work,
                files,
            ))  # fmt: skip
            print(f"round {index + 1}: storescu {rates['storescu'][-1]:.0f}/s, "
                  f"relay {rates['relay'][-1]:.0f}/s", flush=True)  # fmt: skip
    medians = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "instances": opts.count,
        "megabytes": round(megabytes, 1),
        "rounds": opts.rounds,
        "associations": opts.associations,
        "runs_per_s": {name: [round(v) for v in values] for name, values in rates.items()},
        "median_per_s": {name: round(value) for name, value in medians.items()},
        "ratio": round(medians["relay"] / medians["storescu"], 2),
    }
    print(json.dumps(result, indent=2))
    print(f"at least 0.5x storescu: {result['ratio'] >= 0.5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
