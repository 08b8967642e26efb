"""How long ``ascend-batch report`` takes on a 1M-row output, and its peak memory.

Builds a synthetic output directory in the real row schema (``ascend_batch.runner.writer.SCHEMA``):
1,000 part files of 1,000 rows (1,000 classes with a skewed mix, 2% error rows), a ``_job.json``, a
``_summary.json`` and a listing snapshot whose items point at a few real small JPEGs (so thumbnails are
made); then runs the report in a fresh process (against itself as baseline) and prints its wall time and
peak RSS. Not a timed test: the figure to hold is under 30 s with memory that does not grow with rows.

    python benchmarks/report_million.py [--rows 1000000] [--dir /tmp/report-million]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ascend_batch.plan import LISTING_SCHEMA
from ascend_batch.runner.writer import SCHEMA

CLASSES = 1000
UNIT = 1000


def build(out: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    images = out.parent / "images"
    images.mkdir(exist_ok=True)
    jpegs = []
    for i in range(16):
        p = images / f"src{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(p)
        jpegs.append(p)
    labels = np.array([f"class{i:04d}" for i in range(CLASSES)], dtype=object)
    weights = 1.0 / np.arange(1, CLASSES + 1)
    weights /= weights.sum()
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    n_units = (rows + UNIT - 1) // UNIT
    listing = pq.ParquetWriter(out / "_listing.parquet", LISTING_SCHEMA, compression="zstd")
    for unit in range(n_units):
        n = min(UNIT, rows - unit * UNIT)
        ids = [f"d{unit:04d}/img{unit * UNIT + i:07d}.jpg" for i in range(n)]
        err = rng.random(n) < 0.02
        top = rng.choice(CLASSES, size=(n, 5), p=weights)
        probs = np.sort(rng.dirichlet(np.ones(6) * 0.5, size=n)[:, :5], axis=1)[:, ::-1].astype(np.float32)
        t5i = [[] if e else row.tolist() for e, row in zip(err, top, strict=True)]
        t5l = [[] if e else labels[row].tolist() for e, row in zip(err, top, strict=True)]
        t5p = [[] if e else row.tolist() for e, row in zip(err, probs, strict=True)]
        cols = {
            "image_id": ids,
            "source": ["synthetic"] * n,
            "unit": [unit] * n,
            "status": ["error" if e else "ok" for e in err],
            "error": ["decode: broken data" if e else None for e in err],
            "width": [None if e else 64 for e in err],
            "height": [None if e else 48 for e in err],
            "top5_index": t5i,
            "top5_label": t5l,
            "top5_prob": t5p,
            "top1_label": [None if e else r[0] for e, r in zip(err, t5l, strict=True)],
            "top1_prob": [None if e else r[0] for e, r in zip(err, t5p, strict=True)],
            "model": ["m"] * n,
            "backend": ["onnxruntime"] * n,
            "device": [f"cpu:{unit % 2}"] * n,
            "run_id": ["r1"] * n,
            "processed_at": [now] * n,
            "file_size": [1000] * n,
            "file_mtime": [now] * n,
        }
        pq.write_table(pa.table(cols, schema=SCHEMA), out / f"part-{unit:06d}.parquet", compression="zstd")
        paths = [os.fsencode(jpegs[i % len(jpegs)]) for i in range(n)]
        lcols = {
            "image_id": ids,
            "source": [str(images)] * n,
            "kind": ["file"] * n,
            "path": paths,
            "member": [None] * n,
            "offset": [-1] * n,
            "size": [1000] * n,
            "mtime": [0.0] * n,
            "error": [None] * n,
        }
        listing.write_table(pa.table(lcols, schema=LISTING_SCHEMA), row_group_size=UNIT)
    listing.close()
    job = {"name": "million", "n_items": rows, "n_units": n_units, "unit_size": UNIT}
    (out / "_job.json").write_text(json.dumps(job))
    run = {
        "run_id": "r1",
        "wall_seconds": 3600.0,
        "images": rows,
        "images_per_second": rows / 3600,
        "devices": ["cpu:0", "cpu:1"],
    }
    (out / "_summary.json").write_text(json.dumps({"run": run, "per_device_images": {}, "stage_seconds": {}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/report-million"))
    args = ap.parse_args()
    out = args.dir / "out"
    if not (out / "_job.json").exists():
        shutil.rmtree(args.dir, ignore_errors=True)
        t = time.perf_counter()
        build(out, args.rows)
        print(f"built {args.rows:,} rows in {time.perf_counter() - t:.1f} s: {out}")
    cmd = [sys.executable, "-m", "ascend_batch", "report", str(out), "--baseline", str(out)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"report failed ({r.returncode}): {r.stderr}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    page = (out / "_report.html").stat().st_size
    print(r.stdout.strip())
    print(f"report of {args.rows:,} rows (with itself as baseline): {wall:.1f} s, peak RSS {peak_kib / 1024:.0f} MiB")
    print(f"page {page / 1e6:.2f} MB, JSON {(out / '_report.json').stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
