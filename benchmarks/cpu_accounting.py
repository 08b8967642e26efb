"""Where a CPU run's time goes: the runner's CPU per image against its two parts measured alone.

Measured alone, on the same images and model, in this process: (c) inference on pre-decoded
tensors (CPU per image, and img/s) and the runner's decoding (CPU per image, one thread). Then the
runner end to end, whose worker CPU per image is read from the kernel's accounting of child
processes. When the worker's CPU per image equals inference plus decoding, nothing else costs
anything noticeable, and where (c) and the runner both keep every core busy, d/c in steady state
is inference / (inference + decoding): the share of the runner's CPU that is inference.

python benchmarks/cpu_accounting.py ../shared/data/imagenet-sample --run-images /tmp/rep --repeats 3
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ascend_batch.backends.base import get_backend
from ascend_batch.bench import bench_manifest
from ascend_batch.models.resolve import resolve_model
from ascend_batch.preprocess import decode, decode_pixels
from ascend_batch.pyarrow_lean import skip_pandas_check
from ascend_batch.runner.job import available_cores, run_job
from ascend_batch.sources import ItemReader, list_items


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, help="images for inference and decoding alone")
    parser.add_argument("--run-images", type=Path, help="images for the runner (default: the same)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    skip_pandas_check()  # as `ascend-batch run` does
    work = Path(tempfile.mkdtemp(prefix="ascend-cpu-"))
    try:
        manifest = bench_manifest(args.images.resolve(), "onnxruntime", ["cpu:0"], None, None, work / "x", None)
        spec = resolve_model(manifest.model, "onnxruntime")
        pp, batch = spec.preprocess, manifest.runtime.batch_size
        with ItemReader() as reader:
            blobs = [reader.read(item) for item in list_items(manifest.dataset)]
        n = len(blobs)
        tensors = np.stack([decode(b, pp).array for b in blobs])
        session = get_backend("onnxruntime").open(
            manifest.runtime.devices[0], spec, batch_size=batch, threads=available_cores()
        )
        for i in range(0, n, batch):  # warm-up
            session.infer(tensors[i : i + batch])
        run_images = (args.run_images or args.images).resolve()
        print(f"{n} images, batch {batch}, {available_cores()} cores; the runner on {run_images}")
        for r in range(args.repeats):
            cpu0, wall0 = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
            for i in range(0, n, batch):
                session.infer(tensors[i : i + batch])
            infer_cpu = (cpu_seconds(resource.RUSAGE_SELF) - cpu0) / n
            c_rate = n / (time.perf_counter() - wall0)
            cpu0 = cpu_seconds(resource.RUSAGE_SELF)
            for b in blobs:
                decode_pixels(b, pp)
            decode_cpu = (cpu_seconds(resource.RUSAGE_SELF) - cpu0) / n
            out = work / f"out-{r}"
            run_m = bench_manifest(run_images, "onnxruntime", ["cpu:0"], None, None, out, None)
            kids0, wall0 = cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
            done = run_job(run_m, progress_bar=False, log_interval=3600).outcome.images
            wall = time.perf_counter() - wall0
            worker_cpu = (cpu_seconds(resource.RUSAGE_CHILDREN) - kids0) / done
            shutil.rmtree(out, ignore_errors=True)
            share = infer_cpu / (infer_cpu + decode_cpu)
            print(
                f"repeat {r + 1}: (c) {c_rate:.1f} img/s, inference {infer_cpu * 1e3:.2f} ms CPU/image; "
                f"decoding {decode_cpu * 1e3:.2f} ms; runner {done / wall:.1f} img/s, worker "
                f"{worker_cpu * 1e3:.2f} ms CPU/image (inference + decoding: {(infer_cpu + decode_cpu) * 1e3:.2f}); "
                f"inference share {share:.2f}"
            )
        session.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
