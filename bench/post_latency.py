"""Post daemon benchmark: latency from the last Success to the submit, and peak memory.

Run by hand, never as a test (see bench/README.md):

    .venv/bin/python bench/post_latency.py                 # latency only (small series)
    .venv/bin/python bench/post_latency.py --gigabyte      # and the 1 GB series

1. Latency: a series is sent with dcmtk storescu to `isdr serve` (POST_AFTER, POST_INTERVAL
   as given); the time from storescu's exit (its last Success) to the moment the stand-in
   InferenceServer receives the submit must be at most POST_AFTER + POST_INTERVAL + 0.5 s.
2. Memory: a ~1 GB series (2000 CT instances of 0.5 MB) is received, archived and uploaded;
   the relay's peak resident memory (VmHWM) is read from /proc at the end.
3. Completion (`--completion`): two relays with the default POST_AFTER (10 s) and
   POST_INTERVAL (1 s), one whose fingerprint completes a series at the end of its
   association (`complete_on_association_end`), one on the quiet timer; rounds alternate
   between them. The association-end path must start the submit within 1 s of storescu's
   exit (its association's release); the ratio to the timer path is printed.

    .venv/bin/python bench/post_latency.py --completion --json bench/results/completion.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from isdr.demo.standin import StandIn  # noqa: E402
from isdr.synthetic import SeriesSpec, write_series  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_relay(
    work: Path,
    standin: StandIn,
    post_after: float,
    interval: float,
    at_association_end: bool = False,
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    fingerprints = work / "fingerprints"
    fingerprints.mkdir(parents=True, exist_ok=True)
    (fingerprints / "ct.json").write_text(
        json.dumps(
            {
                "modality_regex": "CT",
                "inference_server_url": standin.url_v1,
                "model_human_readable_id": "ct-model",
                "complete_on_association_end": at_association_end,
            }
        )
    )
    env = {
        **os.environ,
        "SCP_PORT": str(port),
        "HTTP_PORT": "0",
        "SCP_AE_TITLE": "BENCH",
        "DATA_DIR": str(work / "data"),
        "INCOMING_DIR": str(work / "incoming"),
        "FINGERPRINT_DIR": str(fingerprints),
        "CERT_FILE": str(standin.ca_file),
        "POST_AFTER": str(post_after),
        "POST_INTERVAL": str(interval),
        "POST_TIMEOUT": "600",
        "MIN_FREE_DISK_MB": "0",
        "LOG_LEVEL": "WARNING",
    }
    log = (work / "relay.log").open("wb")
    relay = subprocess.Popen(
        [sys.executable, "-m", "isdr", "serve"], env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 30
    while subprocess.run(
        ["echoscu", "-aec", "BENCH", "127.0.0.1", str(port)], capture_output=True
    ).returncode:
        if time.monotonic() > deadline or relay.poll() is not None:
            raise RuntimeError("the relay did not start")
        time.sleep(0.2)
    return relay, port


def send(folder: Path, port: int) -> float:
    """Send with storescu; returns the time.monotonic() at which it exited."""
    subprocess.run(
        [
            "storescu",
            "-aec",
            "BENCH",
            "+sd",
            "+r",
            "+sp",
            "*.dcm",
            "127.0.0.1",
            str(port),
            str(folder),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        check=True,
        capture_output=True,
    )
    return time.monotonic()


def wait_submissions(standin: StandIn, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(standin.submissions) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("no submit arrived in time")
        time.sleep(0.01)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(relay: subprocess.Popen[bytes]) -> None:
    relay.send_signal(signal.SIGTERM)
    relay.wait(timeout=30)


def latency(work: Path, rounds: int, post_after: float, interval: float) -> list[float]:
    work.mkdir(parents=True)
    standin = StandIn(work).start()
    relay, port = start_relay(work, standin, post_after, interval)
    results = []
    try:
        for index in range(rounds):
            folder = work / f"series-{index}"
            write_series(folder, SeriesSpec(modality="CT", count=20, rows=256, columns=256))
            done = send(folder, port)
            wait_submissions(standin, index + 1, post_after + interval + 30)
            results.append(standin.submissions[index].started - done)
            print(
                f"round {index + 1}: submit began {results[-1]:.2f} s after the last Success",
                file=sys.stderr,
            )
    finally:
        stop(relay)
        standin.stop()
    return results


def completion(work: Path, rounds: int) -> dict[str, list[float]]:
    """Seconds from storescu's exit to the submit, per round, for each way of completing."""
    modes = {"association_end": True, "quiet_timer": False}
    relays = {}
    for mode, at_end in modes.items():
        (work / mode).mkdir(parents=True)
        standin = StandIn(work / mode).start()
        relay, port = start_relay(work / mode, standin, 10.0, 1.0, at_association_end=at_end)
        relays[mode] = (standin, relay, port)
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    try:
        for index in range(rounds):
            for mode, (standin, _, port) in relays.items():
                folder = work / mode / f"series-{index}"
                write_series(folder, SeriesSpec(modality="CT", count=20, rows=256, columns=256))
                done = send(folder, port)
                wait_submissions(standin, index + 1, 60)
                results[mode].append(standin.submissions[index].started - done)
                print(f"round {index + 1}, {mode}: submit began "
                      f"{results[mode][-1]:.2f} s after the release", file=sys.stderr)  # fmt: skip
    finally:
        for standin, relay, _ in relays.values():
            stop(relay)
            standin.stop()
    return results


def gigabyte(work: Path) -> dict[str, float]:
    work.mkdir(parents=True)
    folder = work / "big"
    print("writing ~1 GB of synthetic CT ...", file=sys.stderr)
    write_series(folder, SeriesSpec(modality="CT", count=2000, rows=512, columns=512))
    size = sum(p.stat().st_size for p in folder.iterdir())
    standin = StandIn(work).start()
    standin.discard = True
    relay, port = start_relay(work, standin, post_after=2, interval=0.5)
    try:
        began = time.monotonic()
        done = send(folder, port)
        wait_submissions(standin, 1, 900)
        uploaded = time.monotonic()
        rss = peak_rss_mb(relay.pid)
    finally:
        stop(relay)
        standin.stop()
    return {
        "series_mb": size / 1e6,
        "receive_s": done - began,
        "archive_mb": standin.submissions[0].size / 1e6,
        "last_success_to_upload_done_s": uploaded - done,
        "peak_rss_mb": rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--post-after", type=float, default=2.0)
    parser.add_argument("--post-interval", type=float, default=0.5)
    parser.add_argument("--gigabyte", action="store_true", help="also the 1 GB memory run")
    parser.add_argument("--completion", action="store_true", help="association end vs. timer")
    parser.add_argument("--json", type=Path, help="write the completion figures here")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="isdr-post-bench-") as temp:
        work = Path(temp)
        if opts.completion:
            return _report_completion(completion(work / "completion", opts.rounds), opts.json)
        results = latency(work / "latency", opts.rounds, opts.post_after, opts.post_interval)
        bound = opts.post_after + opts.post_interval + 0.5
        print(
            f"latency, last Success -> submit: median {statistics.median(results):.2f} s, "
            f"max {max(results):.2f} s; bound POST_AFTER + POST_INTERVAL + 0.5 = {bound:.2f} s: "
            f"{'met' if max(results) <= bound else 'NOT MET'}"
        )
        if opts.gigabyte:
            figures = gigabyte(work / "gigabyte")
            print("1 GB series: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
            print(
                f"peak memory under 200 MB: {'met' if figures['peak_rss_mb'] < 200 else 'NOT MET'}"
            )
    return 0


def _report_completion(results: dict[str, list[float]], path: Path | None) -> int:
    at_end, timer = results["association_end"], results["quiet_timer"]
    ratio = statistics.median(timer) / statistics.median(at_end)
    met = max(at_end) <= 1.0
    print(
        f"release -> submit: association end median {statistics.median(at_end):.2f} s "
        f"(max {max(at_end):.2f}), quiet timer median {statistics.median(timer):.2f} s "
        f"(max {max(timer):.2f}); the timer path takes x{ratio:.1f} as long; "
        f"within 1 s: {'met' if met else 'NOT MET'}"
    )
    if path is not None:
        figures = {**results, "timer_over_association_end": ratio, "within_1s": met}
        path.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
