"""TOML manifest -> frozen dataclasses. Every error names the manifest key and what was expected.

Resolution order (as timm's ``resolve_data_config``): manifest value > model spec default >
built-in default. Relative paths resolve against the manifest's own folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .backends.base import BACKENDS, Device, parse_device
from .errors import ManifestError, ManifestErrors
from .preprocess import _RESAMPLE, DEFAULT_MAX_PIXELS, DTYPES, LAYOUTS

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
BUILTIN_MODELS = ("efficientnet_lite0",)


@dataclass(frozen=True)
class JobConfig:
    name: str
    output: Path
    max_error_fraction: float | None = None  # exceeded -> exit code 6


@dataclass(frozen=True)
class DatasetConfig:
    paths: tuple[str, ...]  # as written, for the record
    resolved: tuple[Path, ...]  # absolute, globs left unexpanded (expanded at listing time)
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_member_bytes: int = 256 * 1024 * 1024
    decode_timeout: float = 30.0
    skip_existing: tuple[Path, ...] = ()  # earlier result dirs whose images (id, size, mtime) are skipped


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


CPU_BATCH_SIZE = 8


def default_batch_size(devices: list[Device] | tuple[Device, ...]) -> int:
    """runtime.batch_size when the manifest leaves it out: 8 on CPUs, 32 on accelerators. On CPU a
    batch of 8 infers as fast per image as 32 once warm, but its first run touches a quarter of the
    memory and the pipeline fills and drains sooner (measured: README, Performance)."""
    return CPU_BATCH_SIZE if devices and all(d.kind == "cpu" for d in devices) else RuntimeConfig.batch_size


@dataclass(frozen=True)
class RuntimeConfig:
    backend: str = "onnxruntime"
    devices: tuple[Device, ...] = (Device("cpu", 0),)
    batch_size: int = 32  # when the manifest omits it: CPU_BATCH_SIZE on CPUs (default_batch_size)
    unit_size: int = 1000
    threads: int = 0  # intra-op threads per inference call; 0 = automatic
    streams: int = 0  # concurrent inference calls per worker (CPU onnxruntime); 0 = automatic
    decode_workers: int = 0  # decode threads per worker; 0 = automatic
    prefetch: int = 2  # batches decoded ahead of inference
    max_retries: int = 2  # worker deaths tolerated per unit before it is bisected
    precision: str | None = None  # torch: fp32 | fp16 | bf16 (default fp16 on cuda/npu, fp32 on cpu)
    channels_last: bool | None = None  # torch: NHWC memory format on accelerators (default on)
    compile: bool | None = None  # torch: torch.compile the model (default off)
    gpu_decode: bool = True  # torch on CUDA: decode JPEGs on the GPU (nvJPEG), CPU fallback per file

    def backend_options(self) -> dict[str, Any]:
        """The backend-specific keys the manifest set (passed to the backend's constructor)."""
        keys = ("precision", "channels_last", "compile")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


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
        are spelled, so a rerun on other hardware or from another folder still resumes."""
        dataset = {k: v for k, v in asdict(self.dataset).items() if k not in ("paths", "skip_existing")}
        payload = {"dataset": dataset, "model": asdict(self.model)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def with_runtime(self, **changes: Any) -> Manifest:
        runtime = RuntimeConfig(**{**asdict(self.runtime), **changes})
        return Manifest(self.job, self.dataset, self.model, runtime, self.source, self.raw)

    def with_output(self, output: Path) -> Manifest:
        job = JobConfig(self.job.name, output, self.job.max_error_fraction)
        return Manifest(job, self.dataset, self.model, self.runtime, self.source, self.raw)


T = TypeVar("T")


class _Reader:
    """Reads one table, collecting errors instead of stopping at the first."""

    def __init__(self, table: str, data: Any, errors: list[ManifestError], manifest: str | None) -> None:
        self.table = table
        self.errors = errors
        self.manifest = manifest
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(table, f"expected a table [{table}], got {type(data).__name__}")
            data = {}
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    def fail(self, key: str, message: str) -> None:
        self.errors.append(ManifestError(key, message, self.manifest))

    def key(self, name: str) -> str:
        return f"{self.table}.{name}"

    def get(self, name: str, kind: type | tuple[type, ...], expected: str, default: Any = None) -> Any:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        else:
            ok = isinstance(value, kinds)
        if not ok:
            self.fail(self.key(name), f"expected {expected}, got {type(value).__name__} {value!r}")
            return default
        return value

    def check(self, name: str, value: T, ok: Callable[[T], bool], message: str, default: T) -> T:
        if value is not None and not ok(value):
            self.fail(self.key(name), message)
            return default
        return value

    def finish(self, allowed: tuple[str, ...]) -> None:
        for name in self.data:
            if name not in allowed:
                hint = f"; allowed keys: {', '.join(allowed)}"
                self.fail(self.key(name), f"unknown key{hint}")


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else (base / p)))


def _triple(r: _Reader, name: str) -> tuple[float, float, float] | None:
    value = r.get(name, (list, int, float), "a number or a list of 3 numbers")
    if value is None:
        return None
    if isinstance(value, (int, float)):
        f = float(value)
        return (f, f, f)
    if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        r.fail(r.key(name), f"expected a list of 3 numbers (R, G, B), got {value!r}")
        return None
    return (float(value[0]), float(value[1]), float(value[2]))


def parse_manifest(data: Mapping[str, Any], base: Path, source: Path | None = None) -> Manifest:
    """Build a :class:`Manifest` from parsed TOML. Raises :class:`ManifestErrors` listing every problem."""
    errors: list[ManifestError] = []
    mname = str(source) if source else None
    for table in data:
        if table not in ("job", "dataset", "model", "runtime"):
            errors.append(ManifestError(table, "unknown table; expected [job], [dataset], [model], [runtime]", mname))

    # [job]
    r = _Reader("job", data.get("job"), errors, mname)
    name = r.get("name", str, "a string", "job")
    output = r.get("output", str, "a path string")
    if output is None and "job" in data and "output" not in r.data:
        r.fail("job.output", "missing: the Parquet output directory")
    elif "job" not in data:
        r.fail("job", "missing table [job] (needs at least output = '...')")
    mef = r.get("max_error_fraction", float, "a number between 0 and 1")
    mef = r.check("max_error_fraction", mef, lambda v: 0.0 <= v <= 1.0, "expected a number between 0 and 1", None)
    r.finish(("name", "output", "max_error_fraction"))
    job = JobConfig(name=name, output=_resolve(base, output or "."), max_error_fraction=mef)

    # [dataset]
    r = _Reader("dataset", data.get("dataset"), errors, mname)
    paths = r.get("paths", list, "a list of paths (directories, globs, archives, list files)")
    resolved: list[Path] = []
    if "dataset" not in data:
        r.fail("dataset", "missing table [dataset] (needs paths = [...])")
    elif paths is None and "paths" not in r.data:
        r.fail("dataset.paths", "missing: a list of directories, globs, archives or list files")
    elif paths is not None:
        if not paths:
            r.fail("dataset.paths", "expected at least one path")
        for i, p in enumerate(paths):
            if not isinstance(p, str) or not p:
                r.fail(f"dataset.paths[{i}]", f"expected a path string, got {p!r}")
                continue
            full = _resolve(base, p)
            # a glob may match nothing (a quiet night); a plain path must exist
            if not any(ch in p for ch in "*?[") and not full.exists():
                r.fail(f"dataset.paths[{i}]", f"no such file or directory: {full}")
            resolved.append(full)
    exts = r.get("extensions", list, "a list of file extensions like ['.jpg', '.png']")
    if exts is not None:
        bad = [e for e in exts if not isinstance(e, str) or not e.startswith(".")]
        if bad or not exts:
            r.fail("dataset.extensions", f"expected extensions starting with '.', got {exts!r}")
            exts = None
    max_pixels = r.get("max_pixels", int, "a positive integer", DEFAULT_MAX_PIXELS)
    max_pixels = r.check("max_pixels", max_pixels, lambda v: v > 0, "expected a positive integer", DEFAULT_MAX_PIXELS)
    mmb = r.get("max_member_bytes", int, "a positive integer (bytes)", 256 * 1024 * 1024)
    mmb = r.check("max_member_bytes", mmb, lambda v: v > 0, "expected a positive integer (bytes)", 256 << 20)
    dto = r.get("decode_timeout", float, "a number of seconds", 30.0)
    dto = r.check("decode_timeout", dto, lambda v: v > 0, "expected a positive number of seconds", 30.0)
    skip = r.get("skip_existing", list, "a list of earlier output directories", [])
    skip_paths: list[Path] = []
    for i, p in enumerate(skip):
        if not isinstance(p, str):
            r.fail(f"dataset.skip_existing[{i}]", f"expected a path string, got {p!r}")
        else:
            skip_paths.append(_resolve(base, p))
    r.finish(("paths", "extensions", "max_pixels", "max_member_bytes", "decode_timeout", "skip_existing"))
    dataset = DatasetConfig(
        paths=tuple(p for p in (paths or []) if isinstance(p, str)),
        resolved=tuple(resolved),
        extensions=tuple(e.lower() for e in exts) if exts else DEFAULT_EXTENSIONS,
        max_pixels=max_pixels,
        max_member_bytes=mmb,
        decode_timeout=float(dto),
        skip_existing=tuple(skip_paths),
    )

    # [model]
    r = _Reader("model", data.get("model"), errors, mname)
    mname_ = r.get("name", str, "a built-in model name")
    mpath = r.get("path", str, "a path to a model file")
    fmt = r.get("format", str, "one of onnx, om, torchscript, torch-export, state-dict")
    from .models.spec import MODEL_FORMATS

    fmt = r.check("format", fmt, lambda v: v in MODEL_FORMATS, f"expected one of {', '.join(MODEL_FORMATS)}", None)
    if mname_ is not None and mname_ not in BUILTIN_MODELS and mpath is None:
        r.fail(
            "model.name",
            f"unknown built-in model {mname_!r}; built-in: {', '.join(BUILTIN_MODELS)} "
            "(or give model.path for your own model)",
        )
    model_path = _resolve(base, mpath) if mpath else None
    if model_path is not None and not model_path.exists():
        r.fail("model.path", f"no such file: {model_path}")
    if model_path is not None and fmt is None:
        guessed = {
            ".onnx": "onnx",
            ".om": "om",
            ".pt": "torchscript",
            ".pt2": "torch-export",
            ".pth": "state-dict",
        }.get(model_path.suffix.lower())
        if guessed is None:
            r.fail(
                "model.format",
                f"cannot tell the format of {model_path.name}; set format = one of {', '.join(MODEL_FORMATS)}",
            )
        fmt = guessed
    labels = r.get("labels", str, "a path to a labels file (.txt or .csv)")
    labels_path = _resolve(base, labels) if labels else None
    if labels_path is not None and not labels_path.exists():
        r.fail("model.labels", f"no such file: {labels_path}")
    weights = r.get("weights", str, "a path to a weights file")
    weights_path = _resolve(base, weights) if weights else None
    if weights_path is not None and not weights_path.exists():
        r.fail("model.weights", f"no such file: {weights_path}")
    arch = r.get("arch", str, "an architecture name")
    size = r.get("input_size", int, "a positive integer (pixels)")
    size = r.check("input_size", size, lambda v: v > 0, "expected a positive integer (pixels)", None)
    resize = r.get("resize", int, "a positive integer (short side in pixels)")
    resize = r.check("resize", resize, lambda v: v > 0, "expected a positive integer (pixels)", None)
    mean = _triple(r, "mean")
    std = _triple(r, "std")
    if std is not None and any(s == 0 for s in std):
        r.fail("model.std", "std values must be non-zero")
        std = None
    layout = r.get("layout", str, "NCHW or NHWC")
    layout = r.check("layout", layout, lambda v: v in LAYOUTS, f"expected one of {', '.join(LAYOUTS)}", None)
    dtype = r.get("dtype", str, "float32, float16 or uint8")
    dtype = r.check("dtype", dtype, lambda v: v in DTYPES, f"expected one of {', '.join(DTYPES)}", None)
    interp = r.get("interpolation", str, "bilinear, bicubic, nearest or lanczos")
    interp = r.check("interpolation", interp, lambda v: v in _RESAMPLE, f"expected one of {', '.join(_RESAMPLE)}", None)
    r.finish(
        (
            "name",
            "path",
            "format",
            "arch",
            "weights",
            "labels",
            "input_size",
            "resize",
            "mean",
            "std",
            "layout",
            "dtype",
            "interpolation",
        )
    )
    if mname_ is None and model_path is None:
        mname_ = "efficientnet_lite0"
    model = ModelConfig(
        name=mname_,
        path=model_path,
        format=fmt,
        arch=arch,
        weights=weights_path,
        labels=labels_path,
        input_size=size,
        resize=resize,
        mean=mean,
        std=std,
        layout=layout,
        dtype=dtype,
        interpolation=interp,
    )

    # [runtime]
    r = _Reader("runtime", data.get("runtime"), errors, mname)
    backend = r.get("backend", str, f"one of {', '.join(BACKENDS)}", "onnxruntime")
    plugin = ":" in backend
    if backend not in BACKENDS and not plugin:
        r.fail(
            "runtime.backend",
            f"expected one of {', '.join(BACKENDS)} (or a plugin 'module:Class'), got {backend!r}",
        )
        backend = "onnxruntime"
    default_kind = "cpu" if plugin else BACKENDS[backend].default_device_kind
    raw_devices = r.get("devices", (list, int, str), "a list of devices like ['cpu:0', 'cpu:1'] or [0, 1]")
    devices: list[Device] = []
    if raw_devices is None:
        devices = [Device("cpu", 0) if backend == "onnxruntime" else Device(default_kind, 0)]
    else:
        if not isinstance(raw_devices, list):
            raw_devices = [raw_devices]
        if not raw_devices:
            r.fail("runtime.devices", "expected at least one device")
        for i, d in enumerate(raw_devices):
            try:
                devices.append(parse_device(d, default_kind))
            except ValueError as exc:
                r.fail(f"runtime.devices[{i}]", str(exc))
        if len(set(devices)) != len(devices):
            r.fail("runtime.devices", f"a device is listed twice: {[str(d) for d in devices]}")
        if backend == "acl" and any(d.kind != "npu" for d in devices):
            r.fail("runtime.devices", "the acl backend runs on NPUs: use indices like [0, 1] or 'npu:0'")
        if backend == "onnxruntime" and any(d.kind == "npu" for d in devices):
            r.fail("runtime.devices", "onnxruntime runs on 'cpu:N' or 'cuda:N', not NPUs (use backend = 'acl')")
    ints = {}
    for key, default, minimum in (
        ("batch_size", default_batch_size(devices), 1),
        ("unit_size", 1000, 1),
        ("threads", 0, 0),
        ("streams", 0, 0),
        ("decode_workers", 0, 0),
        ("prefetch", 2, 1),
        ("max_retries", 2, 0),
    ):
        v = r.get(key, int, f"an integer >= {minimum}", default)
        if v is not None and v < minimum:
            r.fail(r.key(key), f"expected an integer >= {minimum}, got {v}")
            v = default
        ints[key] = v
    precision = r.get("precision", str, "fp32, fp16 or bf16")
    precision = r.check(
        "precision", precision, lambda v: v in ("fp32", "fp16", "bf16"), "expected one of fp32, fp16, bf16", None
    )
    channels_last = r.get("channels_last", bool, "true or false")
    compile_ = r.get("compile", bool, "true or false")
    gpu_decode = r.get("gpu_decode", bool, "true or false", True)
    if backend != "torch" and not plugin:
        for key, value in (("precision", precision), ("channels_last", channels_last), ("compile", compile_)):
            if value is not None:
                r.fail(f"runtime.{key}", f"only the torch backend uses this key (backend is {backend!r})")
    r.finish(
        (
            "precision",
            "channels_last",
            "compile",
            "gpu_decode",
            "backend",
            "devices",
            "batch_size",
            "unit_size",
            "threads",
            "streams",
            "decode_workers",
            "prefetch",
            "max_retries",
        )
    )
    runtime = RuntimeConfig(
        backend=backend,
        devices=tuple(devices),
        precision=precision,
        channels_last=channels_last,
        compile=compile_,
        gpu_decode=gpu_decode,
        **ints,
    )

    formats = () if plugin else BACKENDS[backend].formats
    if not plugin and model.format is not None and model.path is not None and model.format not in formats:
        errors.append(
            ManifestError(
                "model.format",
                f"backend {backend!r} cannot run {model.format!r} models (it runs: {', '.join(formats)})",
                mname,
            )
        )
    if backend == "acl" and model.path is None:
        errors.append(
            ManifestError(
                "model.path",
                "the acl backend needs an .om model: set model.path (convert with ATC, see the README)",
                mname,
            )
        )
    if errors:
        raise ManifestErrors(errors)
    return Manifest(job, dataset, model, runtime, source, dict(data))


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file."""
    p = Path(path)
    if not p.is_file():
        raise ManifestErrors([ManifestError("manifest", f"no such manifest file: {p}")])
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ManifestErrors([ManifestError("toml", f"not valid TOML: {exc}", str(p))]) from None
    except UnicodeDecodeError:
        raise ManifestErrors([ManifestError("toml", "not a UTF-8 text file", str(p))]) from None
    return parse_manifest(data, p.resolve().parent, p.resolve())
