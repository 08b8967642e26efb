"""The model a job runs: file, format, preprocessing and class labels, resolved once."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..preprocess import Preprocess

MODEL_FORMATS = ("onnx", "om", "torchscript", "torch-export", "state-dict")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's content (hex): model identities and the converted-model cache."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """Everything a backend and a worker need to know about the model.

    ``path`` is the model file (ONNX for onnxruntime, ``.om`` for acl, ...). ``arch`` names a
    built-in architecture for formats that need one (``state-dict``). ``identity`` is a short
    content hash used to refuse resuming an output directory with a different model.
    """

    name: str
    path: Path
    format: str
    preprocess: Preprocess
    labels: tuple[str, ...]
    identity: str
    arch: str | None = None
    weights: Path | None = None  # original weights (the default model's .pth), when known
    aipp: str | None = None  # model.aipp: "yuv420sp" | "none" as the manifest states it; None: ask the model

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names shipped with the package, by index."""
    text = resources.files("ascend_batch.models").joinpath("imagenet_classes.csv").read_text("utf-8")
    return _labels_from_rows(list(csv.reader(text.splitlines())))


def load_labels(path: Path) -> tuple[str, ...]:
    """Labels from a file: ``.txt`` (one name per line) or ``.csv`` (an ``index``/``name`` header, or
    ``name`` alone)."""
    text = path.read_text("utf-8")
    if path.suffix.lower() == ".csv":
        return _labels_from_rows(list(csv.reader(text.splitlines())))
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _labels_from_rows(rows: list[list[str]]) -> tuple[str, ...]:
    header = [h.strip().lower() for h in rows[0]]
    body = rows[1:]
    if "name" not in header:
        raise ValueError("labels CSV needs a 'name' column")
    name_col = header.index("name")
    if "index" in header:
        idx_col = header.index("index")
        pairs = sorted((int(r[idx_col]), r[name_col]) for r in body if r)
        if [i for i, _ in pairs] != list(range(len(pairs))):
            raise ValueError("labels CSV 'index' column must be 0..N-1 without gaps")
        return tuple(name for _, name in pairs)
    return tuple(r[name_col] for r in body if r)
