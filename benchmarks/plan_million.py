"""Planning benchmark: list and snapshot a job of N items given by a list file (default 1,000,000),
cut it into units and report seconds and peak RSS. Goal: < 30 s and < 500 MB.

    python benchmarks/plan_million.py [--items 1000000] [--unit-size 1000] [--create-files]

The list file names paths under a scratch folder. With --create-files those files exist (empty);
without, they do not, and each becomes an error item "read: No such file" -- the listing does the
same work per entry (one stat, one snapshot row) either way.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(list_file: Path, out: Path, unit_size: int) -> None:
    from ascend_batch.manifest import parse_manifest
    from ascend_batch.models.resolve import resolve_model
    from ascend_batch.runner.outdir import prepare

    m = parse_manifest(
        {
            "job": {"name": "plan-bench", "output": str(out)},
            "dataset": {"paths": [str(list_file)]},
            "runtime": {"unit_size": unit_size},
        },
        list_file.parent,
    )
    model = resolve_model(m.model, "onnxruntime", build=False)
    t0 = time.perf_counter()
    info = prepare(m, model, out)
    seconds = time.perf_counter() - t0
    units = info.snapshot.units
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = info.snapshot.n_items
    print(f"planned {n} items into {len(units)} units in {seconds:.1f} s; peak RSS {peak_mb:.0f} MB")
    print(f"goal: < 30 s ({'met' if seconds < 30 else 'NOT met'}), < 500 MB ({'met' if peak_mb < 500 else 'NOT met'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--unit-size", type=int, default=1000)
    ap.add_argument("--create-files", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))
        return
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp:
        root = Path(tmp)
        data = root / "data"
        lines = []
        for i in range(args.items):
            rel = f"data/d{i // 1000:04d}/img{i:07d}.jpg"
            lines.append(rel)
        if args.create_files:
            for d in range((args.items + 999) // 1000):
                (data / f"d{d:04d}").mkdir(parents=True)
            for rel in lines:
                (root / rel).touch()
        list_file = root / "list.txt"
        list_file.write_text("\n".join(lines) + "\n")
        print(f"list file: {args.items} entries ({'files exist' if args.create_files else 'files absent'})")
        # a fresh process, so peak RSS is the planner's alone
        subprocess.run(
            [sys.executable, __file__, "--child", str(list_file), str(root / "out"), str(args.unit_size)], check=True
        )


if __name__ == "__main__":
    main()
