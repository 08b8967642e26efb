"""The pipeline benchmark as a script: same as `ascend-batch bench` (all its options).

python benchmarks/bench_pipeline.py ../shared/data/imagenet-sample --repeats 3 --scaling 1,2
"""

from __future__ import annotations

import sys

from ascend_batch.cli import app

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "bench", *sys.argv[1:]]
    app()
