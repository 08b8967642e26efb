"""The parsed manifest: one frozen dataclass per table. A field's default is the manifest's default for
that key (the readers in :mod:`.tables` leave out what the manifest does not set)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..backends.base import Device
from ..preprocess import DEFAULT_MAX_PIXELS
from .rules import rules_for

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_JOB_NAME = "job"
DEFAULT_MODEL = "efficientnet_lite0"  # when the manifest names neither model.name nor model.path
BUILTIN_MODELS = (DEFAULT_MODEL,)
CPU_BATCH_SIZE = 8  # runtime.batch_size when every device is a CPU (default_batch_size)
DEFAULT_STALL_TIMEOUT = 600.0  # runtime.stall_timeout (README, "Resume, crashes and exactly-once")


@dataclass(frozen=True)
class JobConfig:
    name: str
    output: Path
    max_error_fraction: float | None = None  # exceeded -> exit code 6
    report: bool = False  # write OUT/_report.html + .json at the end of the job (ascend-batch report)


@dataclass(frozen=True)
class DatasetConfig:
    paths: tuple[str, ...]  # as written, for the record
    resolved: tuple[Path, ...]  # absolute, globs left unexpanded (expanded at listing time)
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_member_bytes: int = 256 * 1024 * 1024
    decode_timeout: float = 30.0
    skip_existing: tuple[Path, ...] = ()  # earlier result dirs whose images (id, size, mtime) are skipped


# model.aipp: an .om whose AIPP takes uint8 YUV420SP (NV12), or one without AIPP; unset: ask the model
AIPP_INPUTS = ("yuv420sp", "none")


@dataclass(frozen=True)
class ModelConfig:
    name: str | None = None  # built-in model name
    path: Path | None = None  # custom model file
    format: str | None = None
    arch: str | None = None
    weights: Path | None = None
    labels: Path | None = None
    input_size: int | None = None
    resize: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    layout: str | None = None
    dtype: str | None = None
    interpolation: str | None = None
    aipp: str | None = None  # "yuv420sp" | "none": what an .om's input is, where the model cannot be asked


def default_batch_size(devices: list[Device] | tuple[Device, ...]) -> int:
    """runtime.batch_size when the manifest leaves it out: 8 on CPUs, 32 on accelerators. On CPU a
    batch of 8 infers as fast per image as 32 once warm, but its first run touches a quarter of the
    memory and the pipeline fills and drains sooner (measured: README, Performance)."""
    return CPU_BATCH_SIZE if devices and all(d.kind == "cpu" for d in devices) else RuntimeConfig.batch_size


@dataclass(frozen=True)
class RuntimeConfig:
    """``[runtime]``. The backend-specific keys (precision ... device_decode) are accepted only for the
    backends whose rules list them (:mod:`.rules`)."""

    backend: str = "onnxruntime"
    devices: tuple[Device, ...] = (Device("cpu", 0),)  # the manifest's default: the backend's default kind, index 0
    batch_size: int = 32  # when the manifest omits it: CPU_BATCH_SIZE on CPUs (default_batch_size)
    unit_size: int = 1000
    threads: int = 0  # intra-op threads per inference call; 0 = automatic
    streams: int = 0  # concurrent inference calls per worker (CPU onnxruntime); 0 = automatic
    decode_workers: int = 0  # decode threads per worker; 0 = automatic
    prefetch: int = 2  # batches decoded ahead of inference
    max_retries: int = 2  # worker deaths tolerated per unit before it is bisected
    # seconds a worker busy with a task may send nothing before it is killed and handled as a crash;
    # unset: DEFAULT_STALL_TIMEOUT, or twice dataset.decode_timeout where that is longer (tables.py)
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    precision: str | None = None  # torch: fp32 | fp16 | bf16 (default fp16 on cuda/npu, fp32 on cpu)
    channels_last: bool | None = None  # torch: NHWC memory format on accelerators (default on)
    compile: bool | None = None  # torch: torch.compile the model (default off)
    # decode JPEGs on the device, CPU fallback per file: nvJPEG (torch on CUDA), DVPP (acl, AIPP models);
    # `gpu_decode` is its earlier name
    device_decode: bool = True

    def backend_options(self) -> dict[str, Any]:
        """The backend-specific keys the manifest set that go to the backend's constructor."""
        values = {key.name: getattr(self, key.name) for key in rules_for(self.backend).keys if key.option}
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class Manifest:
    job: JobConfig
    dataset: DatasetConfig
    model: ModelConfig
    runtime: RuntimeConfig
    source: Path | None = None  # the manifest file
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def fingerprint(self) -> str:
        """Hash of what decides the results (the dataset's resolved paths and options, the model and
        its preprocessing), not of runtime knobs such as devices or batch size, nor of how paths
        are spelled, so a rerun on other hardware or from another folder still resumes.

        It names existing output directories: a new field of DatasetConfig or ModelConfig changes every
        fingerprint unless it is left out here while it holds its default."""
        dataset = {k: v for k, v in asdict(self.dataset).items() if k not in ("paths", "skip_existing")}
        model = {k: v for k, v in asdict(self.model).items() if not (k == "aipp" and v is None)}  # added later
        payload = {"dataset": dataset, "model": model}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def with_runtime(self, **changes: Any) -> Manifest:
        return replace(self, runtime=replace(self.runtime, **changes))

    def with_output(self, output: Path) -> Manifest:
        return replace(self, job=replace(self.job, output=output))
