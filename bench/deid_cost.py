"""What de-identification adds to a submit: de-identified copies of a CT series made by
isdr.deid.files.deidentify_files, against plain copies of the same files (shutil.copy),
per instance, medians of several rounds. Run by hand, never as a test:

    .venv/bin/python bench/deid_cost.py                 # 200 CT instances of 512 x 512
    .venv/bin/python bench/deid_cost.py --count 500 --json bench/results/deid_cost.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from isdr.deid.files import deidentify_files
from isdr.deid.pseudonyms import Pseudonyms
from isdr.domain.deid import Deidentify
from isdr.synthetic import SeriesSpec, write_series

OPTIONS = Deidentify(retain_dates=True, retain_patient_characteristics=True)


def timed(action: object) -> float:
    start = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="rows and columns")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        spec = SeriesSpec(modality="CT", count=args.count, rows=args.size, columns=args.size)
        sources = write_series(root / "in", spec)
        copies, deids = [], []
        for number in range(args.rounds):
            out = root / f"copy-{number}"
            out.mkdir()
            copies.append(timed(lambda out=out: [shutil.copy(p, out / p.name) for p in sources]))
            target = root / f"deid-{number}"
            deids.append(timed(lambda target=target: deidentify_files(
                sources, target, Pseudonyms(), OPTIONS
            )))  # fmt: skip
    per = {name: 1000 * statistics.median(times) / args.count
           for name, times in (("copy", copies), ("deidentify", deids))}  # fmt: skip
    result = {"count": args.count, "size": args.size, "rounds": args.rounds,
              "ms_per_instance": {k: round(v, 2) for k, v in per.items()},
              "ratio": round(per["deidentify"] / per["copy"], 1)}  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
