"""``ascend-batch bench``: the runner against what users would otherwise run, same images, same
model, one invocation.

(a) seed-style loop: one image at a time, decode -> infer -> top-5, sequential (the pyACL sample's shape);
(b) plain batched script: decode a batch in the main process, then infer it;
(c) inference-only ceiling: the same session fed pre-decoded tensors;
(d) the runner end to end, to committed Parquet (process start and model load included).

(a) and (b) preprocess as a plain script does (:func:`plain_preprocess`: PIL decode, resize,
crop, numpy arithmetic): the runner's tensors to one grey level, except for images at least twice
the needed size, which the runner decodes in JPEG draft mode. The runner's own decoding is faster
(crop-aware resize, normalising into the batch buffer); so that the ratios do not hide where the
gain comes from, (b) is also timed with the runner's decode (``b_batched_runner_decode``, reported,
not used in the ratios).

Each is repeated; medians are reported with the ratios d/a, d/b, d/c.
"""

from __future__ import annotations

import io
import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .backends.base import get_backend
from .manifest import Manifest, parse_manifest
from .models.resolve import resolve_model
from .preprocess import Preprocess, decode
from .runner.job import available_cores, run_job
from .runner.outdir import SUMMARY_FILE
from .runner.writer import topk
from .sources import ItemReader, list_items


@dataclass
class BenchResult:
    name: str
    images: int
    seconds: list[float] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [self.images / s for s in self.seconds]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def plain_preprocess(data: bytes, pp: Preprocess) -> np.ndarray:
    """What a straightforward script does (the torchvision recipe in PIL and numpy): decode the
    whole image, convert to RGB, resize the short side to ``pp.resize``, centre-crop ``pp.size``,
    then ``(x - mean) / std`` and the layout change on fresh arrays."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    w, h = rgb.size
    short = min(w, h)
    new_w = max(pp.size, round(w * pp.resize / short))
    new_h = max(pp.size, round(h * pp.resize / short))
    resample = Image.Resampling[pp.interpolation.upper()]
    rgb = rgb.resize((new_w, new_h), resample)
    left, top = (new_w - pp.size) // 2, (new_h - pp.size) // 2
    rgb = rgb.crop((left, top, left + pp.size, top + pp.size))
    x: np.ndarray = np.asarray(rgb, dtype=np.float32)
    if pp.dtype != "uint8":
        x = (x - np.asarray(pp.mean, dtype=np.float32)) / np.asarray(pp.std, dtype=np.float32)
    if pp.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=pp.numpy_dtype)


def bench_manifest(
    images: Path,
    backend: str,
    devices: list[str],
    batch_size: int | None,
    model: dict | None,
    out: Path,
    unit_size: int | None,
) -> Manifest:
    """The runner's manifest; batch and unit size left out (None) take the runner's defaults."""
    runtime: dict = {"backend": backend, "devices": devices}
    if batch_size is not None:
        runtime["batch_size"] = batch_size
    if unit_size is not None:
        runtime["unit_size"] = unit_size
    data = {
        "job": {"name": "bench", "output": str(out)},
        "dataset": {"paths": [str(images)]},
        "model": model or {"name": "efficientnet_lite0"},
        "runtime": runtime,
    }
    return parse_manifest(data, Path.cwd())


def _time(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def run_bench(
    images: Path,
    *,
    backend: str = "onnxruntime",
    devices: list[str] | None = None,
    batch_size: int | None = None,
    repeats: int = 3,
    model: dict | None = None,
    unit_size: int | None = None,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Time (a)-(d) on the same images; ``batch_size`` and ``unit_size`` default to the runner's."""
    devices = devices or ["cpu:0"]
    work = Path(tempfile.mkdtemp(prefix="ascend-bench-"))
    try:
        m = bench_manifest(images, backend, devices, batch_size, model, work / "out", unit_size)
        batch_size, unit_size = m.runtime.batch_size, m.runtime.unit_size
        spec = resolve_model(m.model, backend)
        items = list(list_items(m.dataset))
        if limit is not None and limit < len(items):
            # the runner must see exactly the same images: a folder of links to the first `limit`
            items = items[:limit]
            images = work / "images"
            images.mkdir()
            for i, it in enumerate(items):
                (images / f"{i:06d}{Path(it.path).suffix}").symlink_to(it.path)
            m = bench_manifest(images, backend, devices, batch_size, model, work / "out", unit_size)
            items = list(list_items(m.dataset))
        with ItemReader() as reader:
            blobs = [reader.read(it) for it in items]
        n = len(blobs)
        cores = available_cores()
        device = m.runtime.devices[0]
        log(
            f"bench: {n} images from {images}, model {spec.name}, {backend} on {', '.join(devices)}, "
            f"batch {batch_size}, {cores} cores, {repeats} repeats"
        )
        session = get_backend(backend).open(device, spec, batch_size=batch_size, threads=cores)
        pp = spec.preprocess
        try:
            cap = min(batch_size, session.max_batch)

            def seed_loop() -> int:
                for b in blobs:
                    x = plain_preprocess(b, pp)[None]
                    topk(session.infer(x))
                return n

            def batched(prep: Callable[[bytes], np.ndarray]) -> Callable[[], int]:
                """(b): decode a batch in this thread with ``prep``, then infer it."""

                def run() -> int:
                    for i in range(0, n, cap):
                        topk(session.infer(np.stack([prep(b) for b in blobs[i : i + cap]])))
                    return n

                return run

            batched_script = batched(lambda b: plain_preprocess(b, pp))
            batched_runner_decode = batched(lambda b: decode(b, pp).array)

            tensors = np.stack([decode(b, pp).array for b in blobs])

            def ceiling() -> int:
                for i in range(0, n, cap):
                    topk(session.infer(tensors[i : i + cap]))
                return n

            results = {
                "a_seed_loop": BenchResult("seed-style loop (1 image at a time)", n),
                "b_batched_script": BenchResult("batched script (decode batch, then infer)", n),
                "c_inference_ceiling": BenchResult("inference only (pre-decoded tensors)", n),
                "d_runner": BenchResult("runner end to end (to committed Parquet)", n),
                "b_batched_runner_decode": BenchResult("(b) with the runner's decode (not in ratios)", n),
            }
            ceiling()  # warm-up
            for r in range(repeats):
                for key, fn in (
                    ("a_seed_loop", seed_loop),
                    ("b_batched_script", batched_script),
                    ("c_inference_ceiling", ceiling),
                    ("b_batched_runner_decode", batched_runner_decode),
                ):
                    seconds, _ = _time(fn)
                    results[key].seconds.append(seconds)
                    log(f"  repeat {r + 1}: {key:22s} {n / seconds:8.1f} img/s")
                # the runner gets the cores to itself: the bench's session sits idle meanwhile
                out = work / f"out-{r}"
                run_m = bench_manifest(images, backend, devices, batch_size, model, out, unit_size)
                t0 = time.perf_counter()
                done = run_job(run_m, progress_bar=False, log_interval=3600).outcome.images
                seconds = time.perf_counter() - t0
                if done != n:
                    raise RuntimeError(f"the runner processed {done} images, the other paths {n}")
                results["d_runner"].seconds.append(seconds)
                log(f"  repeat {r + 1}: {'d_runner':22s} {n / seconds:8.1f} img/s")
                summary = json.loads((out / SUMMARY_FILE).read_text())
                shutil.rmtree(out, ignore_errors=True)
        finally:
            session.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: r.median for k, r in results.items()}
    report = {
        "images": n,
        "dataset": str(images),
        "model": spec.name,
        "backend": backend,
        "devices": devices,
        "batch_size": batch_size,
        "repeats": repeats,
        "cores": cores,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "img_per_s": {
            k: {"median": round(v, 2), "all": [round(x, 2) for x in results[k].rates]} for k, v in med.items()
        },
        "ratios": {
            "d/a": round(med["d_runner"] / med["a_seed_loop"], 3),
            "d/b": round(med["d_runner"] / med["b_batched_script"], 3),
            "d/c": round(med["d_runner"] / med["c_inference_ceiling"], 3),
        },
        # the same ratios within each repeat, where the paths ran back to back: less exposed to the
        # machine's speed drifting between repeats
        "ratios_per_repeat": {
            name: [round(d / x, 3) for d, x in zip(results["d_runner"].rates, results[key].rates, strict=True)]
            for name, key in (("d/a", "a_seed_loop"), ("d/b", "b_batched_script"), ("d/c", "c_inference_ceiling"))
        },
        "runner_last_summary": {"stage_seconds": summary.get("stage_seconds"), "run": summary.get("run")},
        "labels": {k: r.name for k, r in results.items()},
    }
    return report


def run_scaling(
    images: Path,
    worker_counts: list[int],
    *,
    backend: str = "onnxruntime",
    batch_size: int | None = None,
    repeats: int = 3,
    model: dict | None = None,
    unit_size: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Runner img/s (median of ``repeats``) with 1, 2, ... CPU workers (devices cpu:0..cpu:k-1)."""
    work = Path(tempfile.mkdtemp(prefix="ascend-scale-"))
    figures: dict[str, float] = {}
    try:
        for k in worker_counts:
            rates = []
            for r in range(repeats):
                out = work / f"out-{k}-{r}"
                m = bench_manifest(images, backend, [f"cpu:{i}" for i in range(k)], batch_size, model, out, unit_size)
                t0 = time.perf_counter()
                images_done = run_job(m, progress_bar=False, log_interval=3600).outcome.images
                rates.append(images_done / (time.perf_counter() - t0))
                shutil.rmtree(out, ignore_errors=True)
            figures[str(k)] = round(statistics.median(rates), 2)
            log(f"  {k} worker(s): {figures[str(k)]:.1f} img/s (median of {repeats})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = figures[str(worker_counts[0])]
    return {"img_per_s": figures, "speedup": {k: round(v / base, 3) for k, v in figures.items()}}


CHART_KEYS = ("a_seed_loop", "b_batched_script", "c_inference_ceiling", "d_runner")


def write_chart(report: dict, path: Path) -> bool:
    """A PNG bar chart of the medians; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    keys = [k for k in CHART_KEYS if k in report["img_per_s"]]
    values = [report["img_per_s"][k]["median"] for k in keys]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    bars = ax.barh([report["labels"][k] for k in keys], values, color=["#999", "#999", "#4a7", "#36c"])
    ax.bar_label(bars, fmt="%.1f img/s", padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("images / second (median)")
    r = report["ratios"]
    ax.set_title(
        f"{report['model']} on {report['backend']} {','.join(report['devices'])}, {report['cores']} cores, "
        f"batch {report['batch_size']}\nd/a {r['d/a']}, d/b {r['d/b']}, d/c {r['d/c']}",
        fontsize=9,
    )
    ax.set_xlim(0, max(values) * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def format_report(report: dict) -> str:
    lines = [f"{'path':44s} {'img/s (median)':>15s}"]
    for k, v in report["img_per_s"].items():
        lines.append(f"{report['labels'][k]:44s} {v['median']:15.1f}")
    r = report["ratios"]
    lines.append(f"ratios: d/a = {r['d/a']:.2f}   d/b = {r['d/b']:.2f}   d/c = {r['d/c']:.2f}")
    per = report.get("ratios_per_repeat")
    if per and len(per["d/c"]) > 1:
        spans = "   ".join(f"{k} {min(v):.2f}..{max(v):.2f}" for k, v in per.items())
        lines.append(f"within each repeat: {spans}")
    return "\n".join(lines)
