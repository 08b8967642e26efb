"""Shared test helpers: tiny models and generated images (no downloaded data)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PLUGINS = {"PYTHONPATH": f"{TESTS}{os.pathsep}{REPO}"}  # the test backends in tests/crashy_backend.py


def use_test_backend(manifest: Path, name: str) -> None:
    """Switch ``manifest`` to ``crashy_backend:<name>`` (needs :data:`PLUGINS` in the environment)."""
    text = manifest.read_text()
    assert 'backend = "onnxruntime"' in text
    manifest.write_text(text.replace('backend = "onnxruntime"', f'backend = "crashy_backend:{name}"'))


def tiny_onnx(path: Path, classes: int = 10, size: int = 32, batch: int | None = None, seed: int = 0) -> Path:
    """A small conv classifier: conv 3x3 -> relu -> global avg pool -> gemm to ``classes`` logits."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    fc = rng.standard_normal((classes, 8)).astype(np.float32)
    fcb = rng.standard_normal(classes).astype(np.float32)
    n: int | str = batch if batch is not None else "N"
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, classes])],
        [numpy_helper.from_array(a, name) for a, name in ((w, "w"), (b, "b"), (fc, "fc"), (fcb, "fcb"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_images(
    folder: Path, n: int, size: tuple[int, int] = (64, 48), seed: int = 0, prefix: str = "img"
) -> list[Path]:
    """``n`` distinct small JPEGs with random colour blocks."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(arr).resize(size, Image.Resampling.NEAREST)
        p = folder / f"{prefix}{i:05d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def labels_file(path: Path, classes: int = 10) -> Path:
    path.write_text("\n".join(f"class{i}" for i in range(classes)) + "\n", "utf-8")
    return path


def write_manifest(path: Path, body: str) -> Path:
    path.write_text(body, "utf-8")
    return path


def tiny_manifest(
    tmp: Path,
    images: Path | list[str],
    *,
    output: str = "out",
    devices: str = '["cpu:0"]',
    unit_size: int = 10,
    batch_size: int = 4,
    extra_runtime: str = "",
    extra_job: str = "",
    extra_dataset: str = "",
) -> Path:
    model = tiny_onnx(tmp / "tiny.onnx")
    labels = labels_file(tmp / "labels.txt")
    paths = [str(images)] if isinstance(images, Path) else images
    body = f"""
[job]
name = "test"
output = "{output}"
{extra_job}
[dataset]
paths = {paths!r}
{extra_dataset}
[model]
path = "{model}"
labels = "{labels}"
input_size = 32
resize = 36
mean = 127.5
std = 64.0

[runtime]
backend = "onnxruntime"
devices = {devices}
batch_size = {batch_size}
unit_size = {unit_size}
threads = 1
decode_workers = 1
{extra_runtime}
"""
    return write_manifest(tmp / "job.toml", body.replace("'", '"'))


def cli(*args: str | os.PathLike, env: dict | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run(
        [sys.executable, "-m", "ascend_batch", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        **kw,
    )


def wait_for(cond: Callable[[], bool], timeout: float = 60.0, step: float = 0.05) -> bool:
    """Poll ``cond`` until it holds (True) or ``timeout`` seconds pass (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return False


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc), leaving out multiprocessing's resource tracker."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == pid and b"resource_tracker" not in cmd:
                out.append(int(entry))
    return out
